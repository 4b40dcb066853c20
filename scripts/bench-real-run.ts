// npm run bench:real-run — issue 12's goal 3, side by side in one run: a real RUN step,
// `apt-get update && apt-get install -y curl ca-certificates`, in dockvm run-as-root with network: true
// over the Debian base (warm: its squashfs image and the VM's snapshot made by a warm-up run), against
// the same script natively, as root, in a chroot of the same Debian rootfs. The script times its two
// halves with its own clock (the guest's is set from the host's at every start), so the split of the
// guest's time is printed too: update (mostly network and parsing the lists), install (dpkg).
//
// The network is QEMU's user networking to the machine's Debian mirror (deb.debian.org) in the VM, the
// host's own natively; both fetch the same files. BENCH_RUNS (default 1) rounds, alternated, medians.
// Goal: run-as-root at most 10x native.
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { execa } from 'execa';
import { runAsRoot } from '../src/executor/run-as-root.js';
import { checkSpec } from '../src/spec/load.js';
import { packageRoot } from '../src/vm/paths.js';

const FIXTURES = process.env.DOCKVM_FIXTURES || join(packageRoot(), '.cache', 'fixtures');
const RUNS = Number(process.env.BENCH_RUNS ?? 1);
const SCRIPT = [
  't0=$(date +%s%N)',
  'apt-get update -qq',
  't1=$(date +%s%N)',
  'DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl ca-certificates >/dev/null',
  't2=$(date +%s%N)',
  'echo "dockvm-bench update=$(( (t1 - t0) / 1000000 )) install=$(( (t2 - t1) / 1000000 ))" >&2',
].join('\n');

interface Figures {
  total: number;
  update: number;
  install: number;
}

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};

function marks(output: string): { update: number; install: number } {
  const found = /dockvm-bench update=(\d+) install=(\d+)/.exec(output);
  if (!found) throw new Error(`the script did not print its timings:\n${output.slice(-2000)}`);
  return { update: Number(found[1]), install: Number(found[2]) };
}

const work = await mkdtemp(join(tmpdir(), 'dockvm-bench-real-run-'));

async function inVm(): Promise<Figures> {
  const spec = checkSpec({ name: 'localhost/bench/real-run', tag: 'bench', fromImage: join(FIXTURES, 'debian-base.tar'), runAsRoot: SCRIPT, network: true, output: join(work, 'out.tar') }, join(work, 'spec.json'));
  let output = '';
  const start = performance.now();
  await runAsRoot(spec, { onScriptOutput: (chunk) => void (output += chunk.toString()), cache: { noCache: true } });
  return { total: performance.now() - start, ...marks(output) };
}

/** The same script in a chroot of the rootfs, with /proc and the host's resolver, as root. */
async function native(): Promise<Figures> {
  const root = join(work, 'root');
  await rm(root, { recursive: true, force: true });
  await mkdir(root);
  await execa('tar', ['-xpf', join(FIXTURES, 'debian-rootfs.tar'), '-C', root, '--numeric-owner']);
  await copyFile('/etc/resolv.conf', join(root, 'etc/resolv.conf'));
  await execa('mount', ['-t', 'proc', 'proc', join(root, 'proc')]);
  try {
    const start = performance.now();
    const run = await execa('chroot', [root, '/bin/bash', '-e', '-c', SCRIPT], { env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/root' }, extendEnv: false, all: true });
    return { total: performance.now() - start, ...marks(run.all ?? '') };
  } finally {
    await execa('umount', [join(root, 'proc')]);
  }
}

try {
  if (process.getuid?.() !== 0) throw new Error('bench:real-run runs the native side in a chroot: run it as root');
  await inVm(); // warm-up: the base's squashfs image, the initramfs, the VM's snapshot
  const vm: Figures[] = [];
  const host: Figures[] = [];
  for (let round = 0; round < RUNS; round++) {
    host.push(await native());
    vm.push(await inVm());
  }
  const m = (list: Figures[], key: keyof Figures) => median(list.map((f) => f[key]));
  const s = (ms: number) => `${(ms / 1000).toFixed(1).padStart(6)} s`;
  console.log(`apt-get update && apt-get install curl ca-certificates; ${RUNS === 1 ? 'one run' : `medians of ${RUNS}`}; host load average ${loadavg()[0]!.toFixed(1)} on ${cpus().length} CPUs`);
  console.log(`native chroot (root)            ${s(m(host, 'total'))}   1.00x  the reference   (update ${s(m(host, 'update'))}, install ${s(m(host, 'install'))})`);
  const ratio = (key: keyof Figures) => (m(vm, key) / m(host, key)).toFixed(1);
  console.log(`run-as-root, network: true      ${s(m(vm, 'total'))}  ${ratio('total').padStart(5)}x  goal: <= 10x     (update ${s(m(vm, 'update'))} ${ratio('update')}x, install ${s(m(vm, 'install'))} ${ratio('install')}x)`);
  console.log(`  of which the script itself    ${s(m(vm, 'update') + m(vm, 'install'))}; the rest (VM start, mounts, packing, the image) ${s(m(vm, 'total') - m(vm, 'update') - m(vm, 'install'))}`);
} finally {
  await rm(work, { recursive: true, force: true });
}
