// arm64 builds on this (amd64) host, by full-system emulation: run-as-root over the arm64 Debian fixture
// (itself made by dockvm: scripts/fixtures/debian-arm64.sh) runs the amd64 run-as-root test's change
// list in an emulated arm64 machine, checked in the new layer and through podman's view of the image;
// the image's programs are aarch64 ones and its config says so; the script saw an ARM CPU and could
// make a mount namespace (what qemu-user gets wrong). dockvm build of a Containerfile over the arm64
// base, dockvm shell --platform, and export --engine vm of an arm64 image. Four VM boots, counted.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { readTar } from '../../src/layer/tar.js';
import { openImage } from '../../src/transport/index.js';
import { elfFacts } from '../../src/vm/elf.js';
import { ARCHITECTURES, defaultArchitecture, isNative } from '../../src/vm/architectures.js';
import { DEBIAN_ARM64_BASE_REPO_TAG, debianArm64BaseFixture, hasDebianArm64Fixture } from '../fixtures/debian.js';
import { listing, podmanExport, type Seen } from '../helpers/filesystem.js';
import { hasTool, runDockvm } from '../helpers/peers.js';
import { needs } from '../helpers/prerequisites.js';
import { qemuCounter } from '../helpers/qemu-counter.js';

const ready = hasDebianArm64Fixture() && hasTool('qemu-system-aarch64') && hasTool('podman');
// serial: three emulated VMs at once would crowd a small host past the boot deadline
const arm64Test = needs(ready, 'the arm64 Debian fixture, qemu-system-aarch64 or podman is missing (scripts/setup installs and builds them)', test.serial);

/** The amd64 run-as-root test's changes (test/build/run-as-root.test.ts), with the image's own setcap. */
const SCRIPT = `
useradd -m -u 1000 app
chown app:app /srv/owned && chmod 0640 /srv/owned
rm -rf /var/cache/debconf && mkdir /var/cache/debconf && echo fresh > /var/cache/debconf/new
rm /etc/issue /etc/debian_version
ln /etc/os-release /srv/os-release.hard
echo same > /srv/a && ln /srv/a /srv/b
mkfifo /srv/fifo
mknod /srv/null c 1 3
cp /bin/true /srv/ping && setcap cap_net_raw+ep /srv/ping
uname -m > /srv/uname
cat /proc/cpuinfo > /srv/cpuinfo
unshare --mount true && echo ok > /srv/unshare
`;

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-arm64-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The bytes of the regular files at `paths` in a tar. */
async function fileData(tar: string, paths: readonly string[]): Promise<Map<string, Buffer>> {
  const data = new Map<string, Buffer>();
  for await (const { entry, body } of readTar(createReadStream(tar), { source: tar })) {
    const chunks: Buffer[] = [];
    for await (const chunk of body) if (paths.includes(entry.path)) chunks.push(chunk as Buffer);
    if (paths.includes(entry.path)) data.set(entry.path, Buffer.concat(chunks));
  }
  return data;
}

/** Follow symbolic links (bin -> usr/bin, sh -> dash) through a tar's entries to a regular file. */
function resolve(entries: Map<string, Seen>, path: string, depth = 0): string {
  if (depth > 16) throw new Error(`too many links at ${path}`);
  const parts = path.split('/');
  for (let i = 1; i <= parts.length; i++) {
    const found = entries.get(parts.slice(0, i).join('/'));
    if (found?.type !== 'symlink') continue;
    const target = found.linkname!;
    const base = target.startsWith('/') ? target.slice(1) : [...parts.slice(0, i - 1), target].join('/');
    return resolve(entries, [base, ...parts.slice(i)].filter(Boolean).join('/').replace(/(^|\/)\.\//g, '$1'), depth + 1);
  }
  return path;
}

arm64Test('run-as-root over the arm64 base: the script runs in an arm64 VM; whiteouts, opaque dirs, links, devices, setcap, owners in one layer, as podman sees it; aarch64 programs, labelled linux/arm64/v8', async (t) => {
  const dir = tempDir(t);
  mkdirSync(join(dir, 'root', 'srv'), { recursive: true });
  writeFileSync(join(dir, 'root', 'srv', 'owned'), 'owned by app\n');
  const spec = join(dir, 'spec.json');
  writeFileSync(spec, JSON.stringify({ name: 'localhost/dockvm-test/arm64', tag: 'v1', fromImage: debianArm64BaseFixture(), copyToRoot: 'root', runAsRoot: SCRIPT, output: 'image.tar' }));
  const qemu = await qemuCounter(t);
  const run = await runDockvm(['run-as-root', spec, '--json'], { env: qemu.env });
  t.is(run.exitCode, 0, run.stderr);
  t.is(qemu.vmsOf('arm64'), 1, 'one arm64 VM ran the script');
  t.is(qemu.vmsOf('amd64'), 0, 'and no amd64 one');
  const arm64Boot = qemu.starts().find((start) => start.argv.includes('-kernel'))!.argv.join(' ');
  // on a host of another architecture, emulated: the arm64 row's machine (its RAM a snapshot's file,
  // when snapshots are on) and CPU model under TCG
  if (!isNative(ARCHITECTURES.arm64)) t.regex(arm64Boot, /-M virt,gic-version=max(,memory-backend=ram)? -accel tcg -cpu max,pauth=off /);

  const image = await openImage(join(dir, 'image.tar'));
  const layerPath = join(dir, 'layer.tar');
  try {
    t.like(image.config, { os: 'linux', architecture: 'arm64', variant: 'v8' });
    await pipeline(await image.layers.at(-1)!.openTar(), createWriteStream(layerPath));
  } finally {
    await image.close();
  }
  const layer = await listing(layerPath);
  const data = await fileData(layerPath, ['srv/ping', 'srv/uname', 'srv/cpuinfo', 'srv/unshare']);
  const entry = (path: string) => layer.get(path);
  const text = (path: string) => data.get(path)?.toString();
  t.like(entry('etc/.wh.issue'), { type: 'file', size: 0 });
  t.like(entry('etc/.wh.debian_version'), { type: 'file', size: 0 });
  const paths = [...layer.keys()];
  const debconf = paths.indexOf('var/cache/debconf');
  t.deepEqual(paths.slice(debconf, debconf + 3), ['var/cache/debconf', 'var/cache/debconf/.wh..wh..opq', 'var/cache/debconf/new']);
  t.like(entry('home/app'), { type: 'directory', uid: 1000, gid: 1000 });
  t.like(entry('srv/owned'), { type: 'file', mode: 0o640, uid: 1000, gid: 1000 });
  t.like(entry('srv/b'), { type: 'link', linkname: 'srv/a' });
  t.like(entry('srv/os-release.hard'), { type: 'link', linkname: 'etc/os-release' });
  t.like(entry('srv/fifo'), { type: 'fifo' });
  t.like(entry('srv/null'), { type: 'character-device', dev: '1,3' });
  t.deepEqual(entry('srv/ping')?.xattrs, { 'security.capability': '0100000200200000000000000000000000000000' });
  t.is(elfFacts(data.get('srv/ping')!)?.machine, 183, 'the copied /bin/true is an aarch64 program');
  // what the script saw: an ARMv8 CPU with ARM's features (QEMU's max model), not the host's, and a
  // mount namespace of its own (qemu-user shows the host's /proc/cpuinfo and refuses CLONE_NEWNS)
  t.is(text('srv/uname'), 'aarch64\n');
  t.regex(text('srv/cpuinfo')!, /^CPU architecture\s*: 8$/m);
  t.regex(text('srv/cpuinfo')!, /^Features\s*:.* asimd .*\batomics\b/m);
  t.notRegex(text('srv/cpuinfo')!, /vendor_id|model name|^flags/m);
  t.is(text('srv/unshare'), 'ok\n');

  // podman's view of the image (loaded and created as arm64) agrees with dockvm's own flattening of it
  const theirs = await listing(await podmanExport(t, join(dir, 'image.tar'), 'localhost/dockvm-test/arm64:v1', { arch: 'arm64' }));
  const exported = join(dir, 'export.tar');
  t.is((await runDockvm(['export', join(dir, 'image.tar'), '-o', exported])).exitCode, 0);
  const mine = await listing(exported);
  t.deepEqual([...mine.keys()].sort(), [...theirs.keys()].sort());
  for (const [path, seen] of theirs) t.deepEqual(mine.get(path), seen, JSON.stringify(path));
  t.false(theirs.has('etc/issue'));
  t.like(theirs.get('home/app'), { uid: 1000, gid: 1000 });
  // the image's shell, followed through its links (bin -> usr/bin, sh -> dash), is an aarch64 program
  const sh = resolve(mine, 'bin/sh');
  t.is(sh, 'usr/bin/dash');
  t.deepEqual(elfFacts((await fileData(exported, [sh])).get(sh)!), { machine: 183, bits: 64, interpreter: '/lib/ld-linux-aarch64.so.1' });
});

arm64Test('dockvm build over the arm64 base: its RUN steps run in one arm64 VM, the image is linux/arm64/v8', async (t) => {
  const dir = tempDir(t);
  mkdirSync(join(dir, 'ctx'));
  writeFileSync(join(dir, 'ctx', 'hello'), 'hello\n');
  writeFileSync(
    join(dir, 'ctx', 'Containerfile'),
    [`FROM ${DEBIAN_ARM64_BASE_REPO_TAG}`, 'RUN uname -m > /arch && dpkg --print-architecture >> /arch', 'COPY hello /srv/hello', 'RUN useradd -m -u 1000 app && chown app /srv/hello', ''].join('\n'),
  );
  const qemu = await qemuCounter(t);
  const out = join(dir, 'out.tar');
  const run = await runDockvm(['build', '--build-context', `${DEBIAN_ARM64_BASE_REPO_TAG}=docker-archive:${debianArm64BaseFixture()}`, '-t', 'localhost/dockvm-test/arm64-build:1', '-o', out, join(dir, 'ctx')], { env: qemu.env });
  t.is(run.exitCode, 0, run.stderr);
  t.is(qemu.vmsOf('arm64'), 1, 'one arm64 VM for the stage');
  t.is(qemu.vmsOf('amd64'), 0);
  const image = await openImage(out);
  t.teardown(() => image.close());
  t.like(image.config, { os: 'linux', architecture: 'arm64', variant: 'v8' });
  t.is(image.layers.length, 4, 'the base and one layer per step');
  const runLayer = join(dir, 'run.tar');
  await pipeline(await image.layers[1]!.openTar(), createWriteStream(runLayer));
  t.is((await fileData(runLayer, ['arch'])).get('arch')?.toString(), 'aarch64\narm64\n');
  const last = join(dir, 'last.tar');
  await pipeline(await image.layers[3]!.openTar(), createWriteStream(last));
  t.like((await listing(last)).get('srv/hello'), { uid: 1000 });
});

arm64Test('dockvm shell --platform linux/arm64 runs the arm64 image\'s own programs; asking for another platform is refused before any VM boots', async (t) => {
  const qemu = await qemuCounter(t);
  const run = await runDockvm(['shell', '--platform', 'linux/arm64', debianArm64BaseFixture(), '--', 'sh', '-c', 'uname -m; dpkg --print-architecture'], { env: qemu.env });
  t.is(run.exitCode, 0, run.stderr);
  t.is(run.stdout, 'aarch64\narm64\n');
  t.is(qemu.vmsOf('arm64'), 1);
  const other = await runDockvm(['shell', '--platform', 'linux/amd64', debianArm64BaseFixture(), '--', 'true'], { env: qemu.env });
  t.is(other.exitCode, 1);
  t.regex(other.stderr, /^dockvm: \S+debian-arm64-base\.tar is an image for linux\/arm64\/v8, not linux\/amd64$/m);
  t.is(qemu.vms(), 1, 'no second VM');
});

arm64Test('export --engine vm of the arm64 base gives the native engine\'s bytes (nothing of the image runs: the host\'s own VM tars it)', async (t) => {
  const dir = tempDir(t);
  const qemu = await qemuCounter(t);
  const vm = await runDockvm(['export', debianArm64BaseFixture(), '--engine', 'vm', '-o', join(dir, 'vm.tar')], { env: qemu.env });
  t.is(vm.exitCode, 0, vm.stderr);
  const native = await runDockvm(['export', debianArm64BaseFixture(), '-o', join(dir, 'native.tar')]);
  t.is(native.exitCode, 0, native.stderr);
  const digest = (file: string) => createHash('sha256').update(readFileSync(join(dir, file))).digest('hex');
  t.is(digest('vm.tar'), digest('native.tar'));
  t.is(qemu.vmsOf(defaultArchitecture().architecture), 1, 'one VM of the host\'s own architecture');
  t.true((await listing(join(dir, 'vm.tar'))).has('usr/bin/dash'));
});
