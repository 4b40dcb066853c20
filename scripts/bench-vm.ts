// npm run bench:vm — the build VM's fixed costs: boot to agent ready, exec round trip, shutdown (poweroff
// until QEMU is gone and its temp dir removed), and a whole boot + exec + shutdown, as medians over
// BENCH_RUNS (default 5) boots with the accel dockvm chooses.
// Goals under TCG: boot to agent ready <= 1.5 s, exec round trip <= 20 ms.
//
// Also where the boot time goes, from the guest's own clock (/proc/uptime starts when the kernel's
// timekeeping does) and its kernel log: before the kernel (QEMU start, firmware, loading the images),
// the kernel until it runs /init (of which unpacking the initramfs), and init until the agent's hello
// (mounts, module loading). DOCKVM_MACHINE, DOCKVM_BOOT_PROTOCOL, DOCKVM_ACCEL change what is measured.
import { cpus, loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { startVm } from '../src/vm/vm.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 5);
const EXECS = 100;

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};

/** Seconds into the kernel's clock at which a kernel log line matching `pattern` was printed. */
function logTime(dmesg: string, pattern: RegExp): number | undefined {
  const line = dmesg.split('\n').find((l) => pattern.test(l));
  const match = line && /^\[\s*([\d.]+)\]/.exec(line);
  return match ? Number(match[1]) : undefined;
}

interface Run {
  ready: number;
  exec: number;
  shutdown: number;
  total: number;
  beforeKernel: number;
  kernelToInit: number;
  initramfsUnpack: number;
  initToAgent: number;
  hostSide: number;
}

async function once(): Promise<{ run: Run; accel: string; machine: string }> {
  const start = performance.now();
  const vm = await startVm({ onNotice: (line) => console.error(line) });
  const ready = performance.now() - start;
  try {
    // the guest clock right after the hello, minus the time this request took
    const asked = performance.now();
    const uptime = Number((await vm.getFile('/proc/uptime')).toString().split(' ')[0]) * 1000;
    const uptimeAtReady = uptime - (performance.now() - asked) / 2;

    const firstExecStart = performance.now();
    await vm.exec({ argv: ['true'] });
    const firstExec = performance.now() - firstExecStart;

    const times: number[] = [];
    for (let i = 0; i < EXECS; i++) {
      const t = performance.now();
      await vm.exec({ argv: ['true'] });
      times.push(performance.now() - t);
    }

    let dmesg = '';
    await vm.exec({ argv: ['dmesg'], onStdout: (c) => void (dmesg += c.toString()) });
    const runInit = (logTime(dmesg, /Run \/init as init process/) ?? NaN) * 1000;
    const unpackStart = logTime(dmesg, /Trying to unpack rootfs image as initramfs/);
    const unpackEnd = logTime(dmesg, /Freeing initrd memory/);

    const stopStart = performance.now();
    await vm.shutdown();
    const shutdown = performance.now() - stopStart;
    return {
      accel: vm.accel,
      machine: vm.machine,
      run: {
        ready,
        exec: median(times),
        shutdown,
        total: ready + firstExec + shutdown,
        beforeKernel: vm.bootMs - uptimeAtReady,
        kernelToInit: runInit,
        initramfsUnpack: unpackStart !== undefined && unpackEnd !== undefined ? (unpackEnd - unpackStart) * 1000 : NaN,
        initToAgent: uptimeAtReady - runInit,
        hostSide: ready - vm.bootMs,
      },
    };
  } finally {
    await vm.kill();
  }
}

const runs: Run[] = [];
let accel = '';
let machine = '';
for (let i = 0; i < RUNS; i++) {
  const result = await once();
  runs.push(result.run);
  accel = result.accel;
  machine = result.machine;
}
const m = (key: keyof Run): string => `${Math.round(median(runs.map((r) => r[key])))} ms`;
console.log(`accel: ${accel} (machine ${machine}), ${RUNS} runs, medians; host load average ${loadavg()[0]!.toFixed(1)} on ${cpus().length} CPUs`);
console.log(`boot to agent ready:           ${m('ready')}   (goal under TCG: <= 1500 ms)`);
console.log(`exec round trip (${EXECS}x true):   ${m('exec')}   (goal: <= 20 ms)`);
console.log(`shutdown (poweroff, QEMU gone): ${m('shutdown')}`);
console.log(`boot + exec + shutdown:        ${m('total')}`);
console.log('where the boot goes:');
console.log(`  before the kernel's clock (QEMU start, firmware, loading kernel+initramfs): ${m('beforeKernel')}`);
console.log(`  kernel until /init:                  ${m('kernelToInit')}  (of which unpacking the initramfs: ${m('initramfsUnpack')})`);
console.log(`  /init until agent hello (mounts, modules, agent start): ${m('initToAgent')}`);
console.log(`  host side before spawning QEMU (kernel, initramfs, accel lookups): ${m('hostSide')}`);
