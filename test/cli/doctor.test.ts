// dockvm doctor: what the host has for build VMs, as a person or a script would read it.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { execa } from 'execa';
import { runDockvm } from '../helpers/peers.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

test.before(() => {
  // the CLI runs from dist/: refuse to test one older than the doctor's sources
  for (const source of ['src/cli/doctor.ts', ...readdirSync(join(ROOT, 'src/vm')).map((name) => `src/vm/${name}`)]) {
    const built = join(ROOT, 'dist', source.replace(/\.ts$/, '.js'));
    if (!existsSync(built) || statSync(built).mtimeMs < statSync(join(ROOT, source)).mtimeMs) {
      throw new Error(`dist/ is older than ${source}: run \`npm run build\` before the CLI tests`);
    }
  }
});

interface Report {
  qemu: { path: string; version: string } | null;
  kernel: { source: string; release: string; modules: string[]; builtin: string[]; boot: { path: string; protocol: string } } | null;
  initramfs: { path: string; state: string } | null;
  kvm: { device: boolean; usable: boolean | null };
  accel: string | null;
  accelReason: string | null;
  transport: string;
  cache: { dir: string; bytes: number };
  missing: string[];
  ok: boolean;
}

test('doctor --json: qemu and its version, kernel and modules, initramfs, accel, transport, cache', async (t) => {
  const run = await runDockvm(['doctor', '--json'], { env: { DOCKVM_ACCEL: 'tcg' } });
  t.is(run.exitCode, 0, run.stderr);
  const report = JSON.parse(run.stdout) as Report;
  const { stdout: version } = await execa('qemu-system-x86_64', ['--version']);
  t.truthy(report.qemu);
  t.true(version.includes(`version ${report.qemu!.version}`));
  t.is(report.kernel?.source, 'debian-cloud');
  t.regex(report.kernel!.release, /^6\.\d+\.\d+-\d+-cloud-amd64$/);
  t.true(report.kernel!.modules.includes('virtio_console'));
  t.true(report.kernel!.builtin.includes('ext4'));
  t.is(report.kernel!.boot.protocol, 'pvh');
  t.true(existsSync(report.kernel!.boot.path));
  t.true(existsSync(report.initramfs!.path));
  t.deepEqual([report.accel, report.accelReason], ['tcg', 'DOCKVM_ACCEL']);
  t.is(report.kvm.device, existsSync('/dev/kvm'));
  t.is(report.transport, existsSync('/dev/vhost-vsock') ? 'vsock' : 'serial');
  t.true(report.cache.bytes > 10_000_000, 'kernel + initramfs are in the cache');
  t.deepEqual(report.missing, []);
  t.true(report.ok);
});

test('doctor says what is missing and exits 1 when no VM can boot', async (t) => {
  const cache = await mkdtemp(join(tmpdir(), 'dockvm-doctor-'));
  t.teardown(() => rm(cache, { recursive: true, force: true }));
  const run = await runDockvm(['doctor'], { env: { DOCKVM_CACHE: cache, DOCKVM_QEMU: '/nonexistent/qemu', DOCKVM_KERNEL: join(cache, 'no-kernel') } });
  t.is(run.exitCode, 1);
  t.regex(run.stdout, /^qemu: +missing$/m);
  t.regex(run.stdout, /problem: +cannot run \/nonexistent\/qemu: install qemu-system-x86/);
  t.regex(run.stdout, /problem: +DOCKVM_KERNEL=.*no-kernel does not exist/);
  t.regex(run.stdout, new RegExp(`^cache: +${cache} `, 'm'));
  t.regex(run.stderr, /dockvm: 2 problem\(s\) found/);
});
