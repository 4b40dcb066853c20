// VM lifecycles that end badly: two VMs at once, a guest that panics, dockvm killed while booting, and a
// KVM that does not work. Whatever happens, no QEMU process and no temp dir is left behind.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { VmError } from '../../src/errors.js';
import { chooseAccel, kvmDevicePresent } from '../../src/vm/accel.js';
import { ensureAgent } from '../../src/vm/agent-binary.js';
import { bootImage } from '../../src/vm/boot-image.js';
import { ensureInitramfs } from '../../src/vm/initramfs.js';
import { resolveKernel } from '../../src/vm/kernel.js';
import { findQemu } from '../../src/vm/qemu.js';
import { defaultArchitecture } from '../../src/vm/architectures.js';
import { type Vm, bootVm, chooseTransport, snapshotsSaved, startVm } from '../../src/vm/vm.js';
import { onlyWhere } from '../helpers/prerequisites.js';
import { waitFor } from '../helpers/wait.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** A live process (not a zombie waiting to be reaped). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

/** Live QEMU processes booting a VM (not `qemu --version`) whose parent is `parent`. */
function qemuChildren(parent: number): number[] {
  const found: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid !== parent || !comm.startsWith('qemu-system') || !alive(Number(name))) continue;
      if (readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').includes('-kernel')) found.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

async function out(vm: Vm, argv: string[]): Promise<string> {
  const chunks: Buffer[] = [];
  const status = await vm.exec({ argv, onStdout: (c) => void chunks.push(c) });
  if (status.exitCode !== 0) throw new Error(`${argv.join(' ')} exited ${status.exitCode}`);
  return Buffer.concat(chunks).toString();
}

test.serial('two VMs at once do not collide; when one panics it is a VmError, its QEMU and temps are gone, the other runs on', async (t) => {
  const [a, b] = await Promise.all([startVm({ memoryMiB: 256 }), startVm({ memoryMiB: 256 })]);
  t.teardown(() => Promise.all([a.kill(), b.kill()]));
  t.not(a.tempDir, b.tempDir);
  t.not(a.pid, b.pid);
  await Promise.all([a.putFile('/tmp/who', 'a'), b.putFile('/tmp/who', 'b')]);
  t.deepEqual(await Promise.all([out(a, ['cat', '/tmp/who']), out(b, ['cat', '/tmp/who'])]), ['a', 'b']);

  const pid = a.pid!;
  const err = await t.throwsAsync(a.exec({ argv: ['sh', '-c', 'echo c > /proc/sysrq-trigger; sleep 60'] }), { instanceOf: VmError });
  t.regex(err!.message, /the VM (stopped unexpectedly|'s agent went away)/);
  t.regex(err!.message, /Kernel panic/); // the console tail says why
  // by itself: nobody calls kill() (that would clean up whatever dockvm forgot)
  t.true(await waitFor(() => !alive(pid) && !existsSync(a.tempDir)), 'QEMU reaped and temp dir removed');
  await t.throwsAsync(a.exec({ argv: ['true'] }), { instanceOf: VmError });
  t.is(await out(b, ['cat', '/tmp/who']), 'b');
  await b.shutdown();
  t.false(alive(b.pid!));
});

test.serial('SIGTERM to a dockvm process that is booting a VM kills its QEMU and removes its temp dir', async (t) => {
  const tmp = await mkdtemp(join(tmpdir(), 'dockvm-sigterm-'));
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'test', 'vm', 'boot-and-wait.ts')], {
    cwd: ROOT,
    // a guest whose init only sleeps never reaches its agent: the boot is under way for as long as it takes
    env: { ...process.env, TMPDIR: tmp, DOCKVM_KERNEL_ARGS: 'rdinit=/bin/busybox -- sleep 3600' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<NodeJS.Signals | number | null>((resolve) => child.once('exit', (code, signal) => resolve(signal ?? code)));
  let qemu: number[] = [];
  t.teardown(() => {
    child.kill('SIGKILL');
    for (const pid of qemu.filter(alive)) process.kill(pid, 'SIGKILL'); // had the test failed before SIGTERM
  });

  t.true(await waitFor(() => (qemu = qemuChildren(child.pid!)).length > 0), `QEMU started (stderr: ${stderr})`);
  const vmDirs = async () => (await readdir(tmp)).filter((name) => name.startsWith('dockvm-')); // tsx keeps its own cache there too
  t.is((await vmDirs()).length, 1, `the VM made its temp dir (stderr: ${stderr})`);
  child.kill('SIGTERM');
  t.is(await exited, 'SIGTERM'); // the handler re-raised the signal after cleaning up
  t.is(stdout, '', 'it was killed while booting');
  t.true(await waitFor(() => qemu.every((pid) => !alive(pid))), 'no QEMU left');
  t.deepEqual(await vmDirs(), []);
});

/** chooseAccel's inputs for this host's kernel and initramfs, with a probe boot that is counted. */
async function accelOptions(dir: string) {
  const architecture = defaultArchitecture();
  const kernel = await resolveKernel({ architecture });
  const [qemu, initramfs, agent, image] = await Promise.all([findQemu(architecture), ensureInitramfs({ kernel }), ensureAgent(architecture), bootImage(kernel)]);
  const notices: string[] = [];
  const probes = { count: 0 };
  const options = {
    architecture,
    env: { ...process.env, DOCKVM_ACCEL: undefined } as NodeJS.ProcessEnv,
    qemu,
    image,
    initramfsHash: initramfs.hash,
    machine: 'microvm' as const,
    transport: chooseTransport(),
    cacheFile: join(dir, 'accel.json'),
    // 50 ms: no KVM guest reaches its agent that fast, so this stands for a KVM that hangs
    probeTimeoutMs: 50,
    onNotice: (line: string) => notices.push(line),
    boot: (plan: Parameters<Parameters<typeof chooseAccel>[0]['boot']>[0]) => {
      probes.count++;
      return bootVm({ ...plan, architecture, qemu: qemu.path, machine: 'microvm', transport: chooseTransport(), kernel: image.path, initrd: initramfs.path, bridgeBinary: agent.path });
    },
  };
  return { options, notices, probes };
}

test('DOCKVM_ACCEL=kvm or tcg decides without a probe; another value is an error naming it', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'dockvm-accel-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const { options, probes } = await accelOptions(dir);
  t.deepEqual(await chooseAccel({ ...options, env: { ...options.env, DOCKVM_ACCEL: 'kvm' } }), { accel: 'kvm', reason: 'DOCKVM_ACCEL' });
  t.deepEqual(await chooseAccel({ ...options, env: { ...options.env, DOCKVM_ACCEL: 'tcg' } }), { accel: 'tcg', reason: 'DOCKVM_ACCEL' });
  await t.throwsAsync(chooseAccel({ ...options, env: { ...options.env, DOCKVM_ACCEL: 'fast' } }), { instanceOf: VmError, message: /DOCKVM_ACCEL=fast is not one of kvm, tcg/ });
  t.is(probes.count, 0);
  t.false(existsSync(join(dir, 'accel.json')), 'no verdict cached');
});

// Which of the next two runs depends on the host: without /dev/kvm there is no probe to test.
onlyWhere(!kvmDevicePresent(), 'this host has /dev/kvm')('without /dev/kvm the choice is TCG at once, with no probe', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'dockvm-accel-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const { options, probes } = await accelOptions(dir);
  t.deepEqual(await chooseAccel(options), { accel: 'tcg', reason: 'no /dev/kvm' });
  t.is(probes.count, 0);
});

onlyWhere(kvmDevicePresent(), 'no /dev/kvm here, so no KVM probe to fall back from', test.serial)('a KVM that does not reach the agent in time falls back to TCG with one notice, and the verdict is cached', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'dockvm-accel-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const { options, notices, probes } = await accelOptions(dir);
  t.deepEqual(await chooseAccel(options), { accel: 'tcg', reason: 'probe' });
  t.is(probes.count, 1);
  t.is(notices.length, 1);
  t.regex(notices[0]!, /KVM test boot failed .*using TCG/);
  await snapshotsSaved(); // the other tests' VMs may still be saving their snapshots in the background
  t.deepEqual(qemuChildren(process.pid), [], 'the probe VM was killed');
  const cached = JSON.parse(await readFile(join(dir, 'accel.json'), 'utf8')) as Record<string, { accel: string }>;
  t.deepEqual(Object.values(cached).map((v) => v.accel), ['tcg']);

  t.deepEqual(await chooseAccel(options), { accel: 'tcg', reason: 'cached probe' });
  t.is(probes.count, 1, 'no second probe');
});
