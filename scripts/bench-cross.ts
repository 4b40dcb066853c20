// npm run bench:cross — an arm64 build on this host (full-system emulation: qemu-system-aarch64, TCG)
// against the same build for the host's own architecture, side by side in one run, interleaved:
//
//   useradd    run-as-root `useradd -m -u 1000 app` over the arm64 Debian fixture (debian-arm64-base.tar)
//              and over the amd64 one (debian-base.tar), warm (squashfs images cached), --no-cache;
//              also each architecture's bare boot (kernel to agent, nothing mounted)
//   apt-get    with BENCH_APT=1: run-as-root `apt-get update && apt-get install -y PACKAGES` over the
//              arm64 base with network: true (the machine's Debian mirror), against the same over the
//              amd64 base — what a foreign RUN step costs beyond a native one on the same emulator
//   platforms  with BENCH_MULTI=1: run-as-root of the useradd spec with platforms [linux/amd64,
//              linux/arm64] over an index of both bases, written as an index, against the two
//              single-architecture builds of the same spec over the same index (their sum): what
//              building several platforms in one run adds (goal: nothing beyond noise)
//
//   qemu-user  with BENCH_QEMU_USER=1 (root; qemu-user-static installed): the same apt-get over the arm64
//              rootfs in a chroot run by qemu-aarch64-static through binfmt_misc, the way BuildKit and
//              buildah run foreign RUN steps, against run-as-root's arm64 VM, interleaved. It changes the
//              host (mounts binfmt_misc, registers qemu-aarch64 when it is not, and removes what it added):
//              the host setup dockvm itself never needs.
//
// Goals: the arm64 useradd build at most 1.5x the amd64 one; the arm64 apt-get at most 2x qemu-user's.
// BENCH_RUNS (default 3) repeats each measurement and reports the median.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { execa } from 'execa';
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { runAsRoot } from '../src/executor/run-as-root.js';
import { runAsRootPlatforms } from '../src/executor/run-as-root-platforms.js';
import { openImage, writeOciIndex } from '../src/transport/index.js';
import { checkSpec } from '../src/spec/load.js';
import { defaultArchitecture, startVm, type Architecture } from '../src/vm/index.js';
import { packageRoot } from '../src/vm/paths.js';
import { timedCall } from './lib/bench.js';

const FIXTURES = process.env.DOCKVM_FIXTURES || join(packageRoot(), '.cache', 'fixtures');
const BASES: Record<Architecture, string> = { amd64: join(FIXTURES, 'debian-base.tar'), arm64: join(FIXTURES, 'debian-arm64-base.tar') };
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const USERADD = 'useradd -m -u 1000 app';
const APT_PACKAGES = 'curl ca-certificates';
const APT = `apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${APT_PACKAGES} >/dev/null`;

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};

async function build(architecture: Architecture, script: string, out: string, network = false): Promise<number> {
  const spec = checkSpec({ name: `localhost/bench/cross-${architecture}`, tag: 'bench', fromImage: BASES[architecture], runAsRoot: script, network, output: out }, join(tmpdir(), 'bench-spec.json'));
  return timedCall(() => runAsRoot(spec, { onScriptOutput: () => {}, cache: { noCache: true } }));
}

/** The useradd spec over an index base: for every platform (an index) or one architecture. */
async function platformsBuild(base: string, out: string, architecture?: Architecture): Promise<number> {
  const fields = architecture ? { architecture } : { platforms: ['linux/amd64', 'linux/arm64'] };
  const spec = checkSpec({ name: 'localhost/bench/platforms', tag: 'bench', fromImage: base, runAsRoot: USERADD, output: `oci:${out}`, ...fields }, join(tmpdir(), 'bench-spec.json'));
  try {
    return await timedCall(() => runAsRootPlatforms(spec, { onScriptOutput: () => {}, cache: { noCache: true } }));
  } finally {
    await rm(out, { recursive: true, force: true });
  }
}

/** Both fixtures in one OCI layout, named "bookworm" by an index of the two. */
async function indexBase(dir: string): Promise<string> {
  const images = await Promise.all(Object.values(BASES).map((path) => openImage(path)));
  try {
    await writeOciIndex(images, dir, { ref: 'bookworm' });
  } finally {
    await Promise.all(images.map((image) => image.close()));
  }
  return `oci:${dir}:bookworm`;
}

const BINFMT = '/proc/sys/fs/binfmt_misc';
const ROOTFS_ARM64 = join(FIXTURES, 'debian-arm64-rootfs.tar');

/** Register qemu-aarch64 with binfmt_misc (Debian's own line, F: the interpreter opened now, so it works in a chroot); returns the undo. */
async function registerQemuUser(): Promise<() => Promise<void>> {
  if (!existsSync(join(BINFMT, 'register'))) await execa('mount', ['-t', 'binfmt_misc', 'binfmt_misc', BINFMT]);
  if (existsSync(join(BINFMT, 'qemu-aarch64'))) return async () => {};
  writeFileSync(join(BINFMT, 'register'), readFileSync('/usr/lib/binfmt.d/qemu-aarch64.conf', 'utf8').trim());
  return async () => writeFileSync(join(BINFMT, 'qemu-aarch64'), '-1');
}

/** The apt-get step in a fresh chroot of the arm64 rootfs, every arm64 program run by qemu-user. */
async function qemuUserApt(work: string): Promise<number> {
  const root = join(work, 'qemu-user-root');
  await rm(root, { recursive: true, force: true });
  await execa('mkdir', ['-p', root]);
  await execa('tar', ['-xf', ROOTFS_ARM64, '-C', root, '--numeric-owner', '--xattrs', '--xattrs-include=*']);
  await execa('cp', ['-L', '/etc/resolv.conf', join(root, 'etc/resolv.conf')]);
  await execa('mount', ['-t', 'proc', 'proc', join(root, 'proc')]);
  await execa('mount', ['--rbind', '/dev', join(root, 'dev')]);
  try {
    return await timedCall(() => execa('chroot', [root, '/bin/sh', '-c', APT], { env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' }, extendEnv: false }));
  } finally {
    await execa('umount', ['-l', join(root, 'dev')]);
    await execa('umount', [join(root, 'proc')]);
    await rm(root, { recursive: true, force: true });
  }
}

const accels = new Map<Architecture, string>();

async function bareBoot(architecture: Architecture): Promise<number> {
  // a boot, not a restore: what the kernel and initramfs cost (useradd builds below restore, as users' do)
  const vm = await startVm({ architecture, env: { ...process.env, DOCKVM_SNAPSHOTS: 'off' }, onNotice: () => {} });
  const seconds = vm.bootMs / 1000;
  accels.set(architecture, vm.accel.toUpperCase());
  await vm.shutdown();
  return seconds;
}

async function main(): Promise<void> {
  for (const path of Object.values(BASES)) if (!existsSync(path)) throw new Error(`${path} is missing: run  bash scripts/setup`);
  const host = defaultArchitecture().architecture;
  const architectures: Architecture[] = ['amd64', 'arm64'];
  const work = await mkdtemp(join(tmpdir(), 'dockvm-bench-cross-'));
  const out = join(work, 'out.tar');
  const apt = process.env.BENCH_APT === '1';
  const multi = process.env.BENCH_MULTI === '1';
  const qemuUser = process.env.BENCH_QEMU_USER === '1';
  const unregister = qemuUser ? await registerQemuUser() : async () => {};
  const qemuUserTimes = { vm: [] as number[], user: [] as number[] };
  try {
    console.error('warming up (kernels, initramfs, agents, squashfs images of both bases)…');
    for (const architecture of architectures) await build(architecture, 'true', out);
    const index = multi ? await indexBase(join(work, 'index')) : '';
    const platformTimes = { both: [] as number[], sum: [] as number[] };
    const times = Object.fromEntries(architectures.map((a) => [a, { boot: [] as number[], useradd: [] as number[], apt: [] as number[] }])) as Record<Architecture, { boot: number[]; useradd: number[]; apt: number[] }>;
    for (let run = 0; run < RUNS; run++) {
      for (const architecture of architectures) {
        times[architecture].boot.push(await bareBoot(architecture));
        times[architecture].useradd.push(await build(architecture, USERADD, out));
        if (apt) times[architecture].apt.push(await build(architecture, APT, out, true));
      }
      if (qemuUser) {
        qemuUserTimes.user.push(await qemuUserApt(work));
        qemuUserTimes.vm.push(apt ? times.arm64.apt.at(-1)! : await build('arm64', APT, out, true));
      }
      if (multi) {
        platformTimes.both.push(await platformsBuild(index, join(work, 'multi')));
        platformTimes.sum.push((await platformsBuild(index, join(work, 'one'), 'amd64')) + (await platformsBuild(index, join(work, 'one'), 'arm64')));
      }
    }
    const line = (label: string, seconds: number, note = '') => console.log(`  ${label.padEnd(40)} ${seconds.toFixed(2).padStart(7)} s${note}`);
    const how = architectures.map((a) => `${a} ${accels.get(a)}`).join(', ');
    console.log(`cross-architecture builds on this ${host} host (${how}), ${cpus().length} host cores, load ${loadavg()[0]!.toFixed(1)}, ${RUNS === 1 ? 'one run' : `median of ${RUNS}`}`);
    const [amd64, arm64] = [times.amd64, times.arm64];
    line('bare boot, amd64 (kernel to agent)', median(amd64.boot));
    line('bare boot, arm64', median(arm64.boot), `   ${(median(arm64.boot) / median(amd64.boot)).toFixed(2)}x amd64`);
    line(`useradd build, amd64 (${BASES.amd64.split('/').pop()})`, median(amd64.useradd));
    const ratio = median(arm64.useradd) / median(amd64.useradd);
    line(`useradd build, arm64 (${BASES.arm64.split('/').pop()})`, median(arm64.useradd), `   ${ratio.toFixed(2)}x amd64, goal <= 1.5x: ${ratio <= 1.5 ? 'ok' : 'MISSED'}`);
    if (apt) {
      line(`apt-get install ${APT_PACKAGES}, amd64`, median(amd64.apt));
      line(`apt-get install ${APT_PACKAGES}, arm64`, median(arm64.apt), `   ${(median(arm64.apt) / median(amd64.apt)).toFixed(2)}x amd64`);
    }
    if (qemuUser) {
      const user = median(qemuUserTimes.user);
      const vm = median(qemuUserTimes.vm);
      line(`apt-get install ${APT_PACKAGES}, arm64, qemu-user chroot`, user);
      line(`apt-get install ${APT_PACKAGES}, arm64, dockvm's VM`, vm, `   ${(vm / user).toFixed(2)}x qemu-user, goal <= 2x: ${vm / user <= 2 ? 'ok' : 'MISSED'}`);
    }
    if (multi) {
      line('useradd, amd64 + arm64 built one by one', median(platformTimes.sum));
      line('useradd, platforms [amd64, arm64]: an index', median(platformTimes.both), `   ${(median(platformTimes.both) / median(platformTimes.sum)).toFixed(2)}x one by one`);
    }
  } finally {
    await unregister();
    await rm(work, { recursive: true, force: true });
  }
}

await main();
