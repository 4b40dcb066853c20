// dockvm doctor: what the host has for build VMs, as a person or a script would read it.
import { existsSync, readdirSync, statSync, symlinkSync } from 'node:fs';
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
  network: { backend: string; passt: string | null; problem: string | null };
  cache: { dir: string; bytes: number };
  missing: string[];
  ok: boolean;
  architectures: { architecture: string; platform: string; qemu: { path: string } | null; accel: string | null; missing: string[]; ready: boolean }[];
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
  // every architecture dockvm has a VM for: this host (scripts/setup) can build for each, arm64 under TCG
  t.deepEqual(report.architectures.map((a) => [a.platform, a.ready, a.accel]), [
    ['linux/amd64', true, 'tcg'],
    ['linux/arm64/v8', true, 'tcg'],
  ]);
  t.is(report.architectures[1]!.qemu?.path, 'qemu-system-aarch64');
  // passt, which builds with network run on (scripts/setup installs it)
  const { stdout: passt } = await execa('sh', ['-c', 'command -v passt']);
  t.deepEqual(report.network, { backend: 'passt', passt, problem: null });
});

test('doctor without passt on PATH: the network line says what to install, and the VMs can still boot (a build without network needs no passt)', async (t) => {
  // PATH: one directory holding every program of this PATH but passt
  const bin = await mkdtemp(join(tmpdir(), 'dockvm-doctor-path-'));
  t.teardown(() => rm(bin, { recursive: true, force: true }));
  for (const dir of (process.env.PATH ?? '').split(':').filter(Boolean)) {
    for (const name of existsSync(dir) ? readdirSync(dir) : []) {
      if (name !== 'passt' && !existsSync(join(bin, name))) symlinkSync(join(dir, name), join(bin, name));
    }
  }
  t.false(existsSync(join(bin, 'passt')));
  const run = await runDockvm(['doctor'], { env: { DOCKVM_ACCEL: 'tcg', PATH: bin } });
  t.is(run.exitCode, 0, run.stderr);
  t.regex(run.stdout, /^network: +the build VM's network needs passt, which keeps the host's loopback out of its reach: install passt \(apt-get install passt\), or set DOCKVM_HOST_LOOPBACK=1 to use QEMU's user networking, which lets the build reach services on 127\.0\.0\.1$/m);
  t.regex(run.stdout, /^ok: build VMs can boot/m);
});

test('doctor names an architecture it cannot build for and what to install, and still exits 0 for the host\'s own', async (t) => {
  const run = await runDockvm(['doctor'], { env: { DOCKVM_ACCEL: 'tcg', DOCKVM_QEMU_ARM64: '/nonexistent/qemu-system-aarch64' } });
  t.is(run.exitCode, 0, run.stderr);
  t.regex(run.stdout, /^linux\/amd64: +can build \(tcg, /m);
  t.regex(run.stdout, /^linux\/arm64\/v8: +cannot build: cannot run \/nonexistent\/qemu-system-aarch64, which arm64 build VMs need: install qemu-system-arm \(apt-get install qemu-system-arm\) or set DOCKVM_QEMU_ARM64$/m);
  t.regex(run.stdout, /^ok: build VMs can boot on this host \(linux\/amd64\)$/m);
});

test('doctor says what is missing and exits 1 when no VM can boot', async (t) => {
  const cache = await mkdtemp(join(tmpdir(), 'dockvm-doctor-'));
  t.teardown(() => rm(cache, { recursive: true, force: true }));
  const run = await runDockvm(['doctor'], { env: { DOCKVM_CACHE: cache, DOCKVM_QEMU: '/nonexistent/qemu', DOCKVM_KERNEL: join(cache, 'no-kernel') } });
  t.is(run.exitCode, 1);
  t.regex(run.stdout, /^qemu: +missing$/m);
  t.regex(run.stdout, /problem: +cannot run \/nonexistent\/qemu, which amd64 build VMs need: install qemu-system-x86/);
  t.regex(run.stdout, /problem: +DOCKVM_KERNEL=.*no-kernel does not exist/);
  t.regex(run.stdout, new RegExp(`^cache: +${cache} `, 'm'));
  t.regex(run.stderr, /dockvm: 2 problem\(s\) found/);
});
