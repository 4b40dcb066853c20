// npm run bench:vm — the build VM's fixed costs, side by side in one run, each as a ratio against the
// reference measured in the same run: a bare boot of the stock kernel (the same vmlinux through PVH, the
// same microvm machine and CPU) to a trivial busybox init that powers off.
//
//   bare boot     QEMU started until it exited, after the trivial init powered off
//   cold boot     startVm without snapshots: QEMU started until the agent is ready (hello, begin)
//   first start   startVm with no snapshot yet: a cold boot (the snapshot is saved in the background, awaited
//                 before the next figure and not counted in this one)
//   restore       startVm from the snapshot: QEMU started until the agent is ready
//   shell         `dockvm shell debian.tar -- true`, the CLI end to end (Node's start included)
//   run-as-root   `dockvm run-as-root` of `useradd -m -u 1000 app` over debian-base.tar, warm (its
//                 squashfs image cached, --no-cache so that the step runs), the CLI end to end; and the
//                 same with DOCKVM_SNAPSHOTS=off (a boot instead of the restore)
//   exec          one `true` through the agent of a restored VM (median of EXECS)
//   shell phases  where `shell -- true` goes: the steps of src/build/shell.ts run here one at a time and
//                 timed (image opened, scratch disk made, the VM's pieces resolved, QEMU restored to agent
//                 ready with the disks, mount-run, teardown), the disks' share being the restore with them
//                 less the disk-less restore above; what the CLI takes beyond their sum is Node's start,
//                 module loading and the rest. The guest's steps also as QEMU's CPU time (user + system),
//                 which a loaded host inflates less than their wall time
//
// Medians over BENCH_RUNS (default 5) rounds; in each round every measurement runs once, one after the
// other, so that the load of this shared host weighs on all of them alike. Issue 12's goals: shell <= 0.5x
// the bare boot, the warm run-as-root <= 2.0x. Also where a cold boot goes, from the guest's own clock and kernel log.
import { execa } from 'execa';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { writeCpio } from '../src/vm/cpio.js';
import { bootImage } from '../src/vm/boot-image.js';
import { findBusybox } from '../src/vm/guest-tools.js';
import { resolveKernel } from '../src/vm/kernel.js';
import { ARCHITECTURES } from '../src/vm/architectures.js';
import { findQemu, hostTscKhz } from '../src/vm/qemu.js';
import { packageRoot } from '../src/vm/paths.js';
import { type Vm, snapshotsSaved, startVm } from '../src/vm/vm.js';
import { withTempDir } from '../src/cleanup.js';
import { openImage } from '../src/transport/index.js';
import { BuildVm } from '../src/build/build-vm.js';
import { scriptEnvironment } from '../src/build/config.js';
import { commandLaunch, runStep } from '../src/build/interpreter.js';
import { lowersFor } from '../src/build/lowers.js';
import { platformOf, runnableRow } from '../src/build/platform.js';
import { createUpperDisk } from '../src/build/vm-layer.js';
import { requireGuestPieces } from '../src/vm/guest-platform.js';
import { DEFAULT_DISK_SIZE } from '../src/spec/schema.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 5);
const EXECS = 50;
const FIXTURES = process.env.DOCKVM_FIXTURES || join(packageRoot(), '.cache', 'fixtures');

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};

const work = await mkdtemp(join(tmpdir(), 'dockvm-bench-vm-'));
const snapshots = join(work, 'snapshots');
const env = { ...process.env, DOCKVM_SNAPSHOT_DIR: snapshots };
process.env.DOCKVM_SNAPSHOT_DIR = snapshots; // for BuildVm.start (shellPhases), which reads process.env

/** The reference: the stock kernel to an init that powers off at once. */
async function bareBootCommand(): Promise<{ qemu: string; args: string[] }> {
  const amd64 = ARCHITECTURES.amd64;
  const kernel = await resolveKernel({ architecture: amd64 });
  const [qemu, image, busybox] = await Promise.all([findQemu(amd64), bootImage(kernel), findBusybox(amd64)]);
  const initrd = join(work, 'bare.cpio');
  await writeFile(
    initrd,
    writeCpio([
      { path: 'bin', type: 'dir', mode: 0o755 },
      { path: 'bin/busybox', type: 'file', mode: 0o755, data: busybox.data },
      { path: 'dev', type: 'dir', mode: 0o755 },
      { path: 'dev/console', type: 'chardev', mode: 0o600, major: 5, minor: 1 },
      { path: 'init', type: 'file', mode: 0o755, data: Buffer.from('#!/bin/busybox sh\nexec /bin/busybox poweroff -f\n') },
    ]),
  );
  const tsc = hostTscKhz(await readFile('/proc/cpuinfo', 'utf8'));
  // the kernel flags any microVM would pass (none of dockvm's own); tsc_early_khz: without it a busy
  // host's PIT calibration can hang the boot (qemu.ts)
  const cmdline = ['console=ttyS0', 'quiet', 'loglevel=3', 'panic=-1', 'reboot=t', 'mitigations=off', 'tsc=reliable', 'no_timer_check', '8250.nr_uarts=1', 'random.trust_cpu=on', 'cryptomgr.notests', ...(tsc ? [`tsc_early_khz=${tsc}`] : [])];
  return {
    qemu: qemu.path,
    args: ['-nodefaults', '-no-user-config', '-M', 'microvm,x-option-roms=off,rtc=on,acpi=on', '-accel', 'tcg', '-cpu', amd64.cpu.tcg, '-m', '512', '-smp', '1', '-no-reboot', '-display', 'none', '-serial', 'stdio', '-kernel', image.path, '-initrd', initrd, '-append', cmdline.join(' ')],
  };
}

async function timed<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const start = performance.now();
  const result = await fn();
  return [performance.now() - start, result];
}

interface ColdBootSplit {
  beforeKernel: number;
  kernelToInit: number;
  initToAgent: number;
}

/** Seconds into the kernel's clock at which a kernel log line matching `pattern` was printed. */
function logTime(dmesg: string, pattern: RegExp): number | undefined {
  const line = dmesg.split('\n').find((l) => pattern.test(l));
  const match = line && /^\[\s*([\d.]+)\]/.exec(line);
  return match ? Number(match[1]) : undefined;
}

async function guestOutput(vm: Vm, argv: string[]): Promise<string> {
  let out = '';
  await vm.exec({ argv, onStdout: (c) => void (out += c.toString()) });
  return out;
}

/** Where a cold boot's time went, from the guest's clock (/proc/uptime starts with the kernel's timekeeping). */
async function coldSplit(vm: Vm): Promise<ColdBootSplit> {
  const asked = performance.now();
  const uptime = Number((await vm.getFile('/proc/uptime')).toString().split(' ')[0]) * 1000;
  const uptimeAtReady = uptime - (performance.now() - asked) / 2;
  const runInit = (logTime(await guestOutput(vm, ['dmesg']), /Run \/init as init process/) ?? NaN) * 1000;
  return { beforeKernel: vm.bootMs - uptimeAtReady, kernelToInit: runInit, initToAgent: uptimeAtReady - runInit };
}

const SHELL_PHASES = ['open', 'scratch', 'resolve', 'restore', 'mountRun', 'teardown'] as const;
type ShellPhases = Record<(typeof SHELL_PHASES)[number], number> & { restoreCpu: number; mountRunCpu: number };

/** CPU time (user + system, ms) process `pid` has used so far, from /proc/PID/stat. */
async function cpuMs(pid: number): Promise<number> {
  const fields = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]!.split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // USER_HZ is 100 on Linux
}
const SHELL_PHASE_LABELS: Record<(typeof SHELL_PHASES)[number], string> = {
  open: 'open image, lowers, host pieces',
  scratch: 'temp dir, scratch disk',
  resolve: 'VM pieces resolved (before QEMU)',
  restore: 'QEMU restored, disks, agent begin',
  mountRun: 'mount-run true (guest)',
  teardown: 'VM killed, temp dir, image closed',
};

/** `shell IMAGE -- true` as src/build/shell.ts does it, one step at a time, each timed. */
async function shellPhases(reference: string): Promise<ShellPhases> {
  const phases = {} as ShellPhases;
  let last = performance.now();
  const lap = (phase: keyof ShellPhases) => {
    const now = performance.now();
    phases[phase] = (phases[phase] ?? 0) + now - last;
    last = now;
  };
  const image = await openImage(reference);
  const row = runnableRow(platformOf(image.config), reference);
  await requireGuestPieces(row);
  const lowers = await lowersFor(image, reference);
  lap('open');
  await withTempDir('bench-shell', async (tmp) => {
    const scratch = join(tmp, 'scratch.ext4');
    await createUpperDisk(scratch, DEFAULT_DISK_SIZE);
    lap('scratch');
    const vm = await BuildVm.start({ lowers, scratch }, { architecture: row.architecture, network: false });
    if (!vm.vm.restored) throw new Error('the shell VM was not restored');
    phases.resolve = performance.now() - last - vm.vm.bootMs;
    phases.restore = vm.vm.bootMs;
    phases.restoreCpu = await cpuMs(vm.vm.pid!);
    last = performance.now();
    const { args } = runStep(scriptEnvironment(image.config.config?.Env, {}), commandLaunch(['true']));
    const result = await vm.mountAndRun({ args });
    if (result.exitCode !== 0) throw new Error(`mount-run true failed: ${result.stderr}`);
    lap('mountRun');
    phases.mountRunCpu = (await cpuMs(vm.vm.pid!)) - phases.restoreCpu;
    await vm.kill();
  });
  await image.close();
  lap('teardown');
  return phases;
}

const bare = await bareBootCommand();
const debian = join(FIXTURES, 'debian.tar');
const cli = join(packageRoot(), 'bin', 'dockvm.js');
const spec = join(work, 'spec.json');
await writeFile(spec, JSON.stringify({ name: 'localhost/bench/vm', tag: 'bench', fromImage: join(FIXTURES, 'debian-base.tar'), runAsRoot: 'useradd -m -u 1000 app', output: join(work, 'out.tar') }));
const runAsRoot = (more: NodeJS.ProcessEnv = {}) => execa('node', [cli, 'run-as-root', spec, '--no-cache'], { env: { ...env, ...more }, stdin: 'ignore' });
// warm-up: KVM verdict, kernel, initramfs, the Debian bases' lower images, the snapshot
await execa('node', [cli, 'shell', debian, '--', 'true'], { env, stdio: 'ignore' });
await runAsRoot();

const figures: Record<'bare' | 'cold' | 'first' | 'restore' | 'shell' | 'exec' | 'runAsRoot' | 'runAsRootBooted' | 'cliVersion', number[]> = {
  cliVersion: [],
  bare: [],
  cold: [],
  first: [],
  restore: [],
  shell: [],
  exec: [],
  runAsRoot: [],
  runAsRootBooted: [],
};
const splits: ColdBootSplit[] = [];
const shellSplits: ShellPhases[] = [];
let accel = '';
for (let round = 0; round < RUNS; round++) {
  figures.bare.push((await timed(() => execa(bare.qemu, bare.args, { stdin: 'ignore' })))[0]);

  const [coldMs, cold] = await timed(() => startVm({ env, snapshots: false }));
  figures.cold.push(coldMs);
  accel = cold.accel;
  splits.push(await coldSplit(cold));
  await cold.kill();

  await rm(snapshots, { recursive: true, force: true });
  const [firstMs, first] = await timed(() => startVm({ env, onNotice: () => {} }));
  figures.first.push(firstMs);
  await first.kill();
  await snapshotsSaved();

  const [restoreMs, restored] = await timed(() => startVm({ env }));
  if (!restored.restored) throw new Error('the VM was not restored');
  figures.restore.push(restoreMs);
  const execs: number[] = [];
  for (let i = 0; i < EXECS; i++) execs.push((await timed(() => restored.exec({ argv: ['true'] })))[0]);
  figures.exec.push(median(execs));
  await restored.kill();

  figures.shell.push((await timed(() => execa('node', [cli, 'shell', debian, '--', 'true'], { env, stdin: 'ignore' })))[0]);
  figures.cliVersion.push((await timed(() => execa('node', [cli, '--version'], { env, stdin: 'ignore' })))[0]);
  shellSplits.push(await shellPhases(debian));
  figures.runAsRoot.push((await timed(() => runAsRoot()))[0]);
  figures.runAsRootBooted.push((await timed(() => runAsRoot({ DOCKVM_SNAPSHOTS: 'off' })))[0]);
}
await rm(work, { recursive: true, force: true });

const reference = median(figures.bare);
const row = (label: string, values: number[], note = ''): string =>
  `${label.padEnd(34)} ${String(Math.round(median(values))).padStart(6)} ms  ${(median(values) / reference).toFixed(2).padStart(5)}x${note ? `  ${note}` : ''}`;
console.log(`accel ${accel}, ${RUNS} rounds, medians; host load average ${loadavg()[0]!.toFixed(1)} on ${cpus().length} CPUs; ratios against the bare boot`);
console.log(row('bare boot (stock kernel, trivial init)', figures.bare, 'the reference'));
console.log(row('dockvm cold boot to agent ready', figures.cold));
console.log(row('first start (boot; save in background)', figures.first));
console.log(row('restore to agent ready', figures.restore));
console.log(row('shell debian.tar -- true (CLI)', figures.shell, 'goal: <= 0.50x'));
console.log(row('exec round trip (true)', figures.exec));
console.log(row('run-as-root useradd, warm (CLI)', figures.runAsRoot, 'goal: <= 2.00x'));
console.log(row('  the same, DOCKVM_SNAPSHOTS=off', figures.runAsRootBooted));
console.log('where shell -- true goes (its steps run one at a time in this process):');
for (const phase of SHELL_PHASES) {
  console.log(row(`  ${SHELL_PHASE_LABELS[phase]}`, shellSplits.map((split) => split[phase])));
  if (phase === 'restore') {
    console.log(row('    QEMU CPU time', shellSplits.map((split) => split.restoreCpu)));
    console.log(row('    startVm with no disks, for comparison', figures.restore));
  }
  if (phase === 'mountRun') console.log(row('    QEMU CPU time', shellSplits.map((split) => split.mountRunCpu)));
}
const inProcess = shellSplits.map((split) => SHELL_PHASES.reduce((sum, phase) => sum + split[phase], 0));
console.log(row('  sum of the steps above', inProcess));
console.log(row('  the CLI beyond them (Node, modules…)', [median(figures.shell) - median(inProcess)]));
console.log(row('    of which node dockvm --version', figures.cliVersion));
const m = (key: keyof ColdBootSplit) => `${Math.round(median(splits.map((s) => s[key])))} ms`;
console.log(`cold boot: before the kernel's clock ${m('beforeKernel')}, kernel to /init ${m('kernelToInit')}, /init to agent ready ${m('initToAgent')}`);
