// run-as-root end to end, with real VM boots (TCG here): a script that exercises every kind of change
// over the Debian fixture, checked in the new layer itself and through podman's view of the image.
import test from 'ava';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { openImage } from '../../src/transport/index.js';
import { debianFixture } from '../fixtures/debian.js';
import { listing, podmanExport, type Seen } from '../helpers/filesystem.js';
import { runDockvm, uniqueName } from '../helpers/peers.js';
import { qemuCounter } from '../helpers/qemu-counter.js';

const LONG = 'n'.repeat(200);
const SCRIPT = `
useradd -m -u 1000 app
chown app:app /srv/owned && chmod 0640 /srv/owned
rm -rf /var/cache/debconf && mkdir /var/cache/debconf && echo fresh > /var/cache/debconf/new
rm /etc/issue /etc/debian_version
ln /etc/os-release /srv/os-release.hard
echo same > /srv/a && ln /srv/a /srv/b
mkfifo /srv/fifo
mknod /srv/null c 1 3
cp /bin/true /srv/ping && /usr/local/sbin/setcap cap_net_raw+ep /srv/ping && rm /usr/local/sbin/setcap
touch "/srv/line
break" "/srv/${LONG}"
ln -s /nonexistent/target /srv/dangling
echo "pid $$ in $(pwd) as $(id -u), HOME=$HOME, GREETING=$GREETING" > /srv/env
test -e /proc/self/status && test -c /dev/null && test -d /sys/kernel
echo script done
`;

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-rar-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A spec over the Debian fixture with copyToRoot (setcap from the host, a file, a config). */
function writeSpec(dir: string, extra: Record<string, unknown> = {}): string {
  const root = join(dir, 'root');
  mkdirSync(join(root, 'usr/local/sbin'), { recursive: true });
  mkdirSync(join(root, 'srv'), { recursive: true });
  mkdirSync(join(root, 'opt/app'), { recursive: true });
  copyFileSync('/usr/sbin/setcap', join(root, 'usr/local/sbin/setcap'));
  chmodSync(join(root, 'usr/local/sbin/setcap'), 0o755);
  writeFileSync(join(root, 'srv/owned'), 'owned by app\n');
  writeFileSync(join(root, 'opt/app/config.json'), '{"from":"copyToRoot"}\n');
  const spec = join(dir, 'spec.json');
  writeFileSync(
    spec,
    JSON.stringify({
      name: 'localhost/dockvm-test/run-as-root',
      tag: 'v1',
      fromImage: debianFixture(),
      copyToRoot: 'root',
      runAsRoot: SCRIPT,
      config: { Env: ['GREETING=hello'], Cmd: ['/bin/bash'] },
      env: { EXTRA: '1' },
      output: 'image.tar',
      ...extra,
    }),
  );
  return spec;
}

async function build(t: { is(a: unknown, b: unknown, m?: string): void }, spec: string, args: string[] = [], env: Record<string, string> = {}): Promise<Record<string, unknown>> {
  const run = await runDockvm(['run-as-root', spec, '--json', ...args], { env });
  t.is(run.exitCode, 0, run.stderr);
  return JSON.parse(run.stdout) as Record<string, unknown>;
}

/** The entries of the image's top layer (the one run-as-root made). */
async function newLayer(dir: string, archive: string): Promise<Map<string, Seen>> {
  const image = await openImage(archive);
  try {
    const layerTar = join(dir, 'new-layer.tar');
    const { createWriteStream } = await import('node:fs');
    const { pipeline } = await import('node:stream/promises');
    await pipeline(await image.layers.at(-1)!.openTar(), createWriteStream(layerTar));
    return await listing(layerTar);
  } finally {
    await image.close();
  }
}

test('the script\'s changes become one OCI layer: whiteouts, opaque dirs, links, devices, xattrs, owners', async (t) => {
  const dir = tempDir(t);
  const result = await build(t, writeSpec(dir));
  t.is(result.imageName, 'localhost/dockvm-test/run-as-root');
  t.is(result.imageTag, 'v1');
  const layers = result.layers as { diffId: string }[];
  t.is(layers.length, 5, 'the base\'s four layers and one new one');

  const layer = await newLayer(dir, join(dir, 'image.tar'));
  const paths = [...layer.keys()];
  // OCI whiteouts only: no overlay devices, no overlay xattrs, nothing of the mounts the run had
  t.like(layer.get('etc/.wh.issue'), { type: 'file', size: 0 });
  t.like(layer.get('etc/.wh.debian_version'), { type: 'file', size: 0 });
  t.false([...layer.values()].some((e) => e.type === 'character-device' && e.dev === '0,0'), 'no 0/0 devices');
  t.false([...layer.values()].some((e) => Object.keys(e.xattrs ?? {}).some((x) => x.startsWith('trusted.overlay.'))), 'no overlay xattrs');
  t.false(paths.some((p) => /^(proc|sys|dev)\//.test(p)), 'nothing under /proc, /sys, /dev');
  // a base directory deleted and recreated is opaque, marker first
  const debconf = paths.indexOf('var/cache/debconf');
  t.deepEqual(paths.slice(debconf, debconf + 3), ['var/cache/debconf', 'var/cache/debconf/.wh..wh..opq', 'var/cache/debconf/new']);
  // useradd, chown/chmod, copyToRoot
  t.like(layer.get('home/app'), { type: 'directory', uid: 1000, gid: 1000 });
  t.like(layer.get('srv/owned'), { type: 'file', mode: 0o640, uid: 1000, gid: 1000 });
  t.like(layer.get('opt/app/config.json'), { type: 'file', uid: 0, gid: 0 });
  t.false(layer.has('usr/local/sbin/setcap'), 'a copied-in file the script removed is gone');
  // links, special files, xattrs, odd names
  t.like(layer.get('srv/b'), { type: 'link', linkname: 'srv/a' });
  t.like(layer.get('srv/os-release.hard'), { type: 'link', linkname: 'etc/os-release' });
  t.like(layer.get('srv/fifo'), { type: 'fifo' });
  t.like(layer.get('srv/null'), { type: 'character-device', dev: '1,3' });
  t.deepEqual(layer.get('srv/ping')?.xattrs, { 'security.capability': '0100000200200000000000000000000000000000' });
  t.like(layer.get('srv/line\nbreak'), { type: 'file' });
  t.like(layer.get(`srv/${LONG}`), { type: 'file' });
  t.like(layer.get('srv/dangling'), { type: 'symlink', linkname: '/nonexistent/target' });
  for (const entry of layer.values()) t.true(entry.mtime <= 1, 'mtimes clamped to created (1970-01-01T00:00:01Z)');

  // podman's view of the image agrees with dockvm's own flattening of it
  const tag = `localhost/dockvm-test/run-as-root:v1`;
  const theirs = await listing(await podmanExport(t, join(dir, 'image.tar'), tag));
  const export_ = await runDockvm(['export', join(dir, 'image.tar'), '-o', join(dir, 'export.tar')]);
  t.is(export_.exitCode, 0, export_.stderr);
  const mine = await listing(join(dir, 'export.tar'));
  // podman export writes no POSIX ACLs (containers/storage archives only security.capability and user.*
  // xattrs): the fixture's ACL layer is the one difference (its ACLs are checked in test/build/acl.test.ts).
  for (const entry of mine.values()) {
    for (const name of ['system.posix_acl_access', 'system.posix_acl_default']) delete entry.xattrs?.[name];
    if (entry.xattrs && Object.keys(entry.xattrs).length === 0) delete entry.xattrs;
  }
  t.deepEqual([...mine.keys()].sort(), [...theirs.keys()].sort());
  for (const [path, entry] of theirs) t.deepEqual(mine.get(path), entry, JSON.stringify(path));
  t.false(theirs.has('etc/issue'));
  t.deepEqual([...theirs.keys()].filter((p) => p.startsWith('var/cache/debconf/')), ['var/cache/debconf/new']);
  t.true(theirs.has('etc/os-release') && theirs.has('etc/passwd'));
  t.deepEqual(theirs.get('srv/ping')?.xattrs, { 'security.capability': '0100000200200000000000000000000000000000' });
});

test('the script runs like a Dockerfile RUN: root, cwd /, merged Env, spec env, HOME, /proc /dev /sys mounted', async (t) => {
  // Shares the build above's spec shape but checks the environment file the script wrote.
  const dir = tempDir(t);
  await build(t, writeSpec(dir, { runAsRoot: `${SCRIPT}\necho "EXTRA=$EXTRA PATH=$PATH" >> /srv/env` }));
  const image = await openImage(join(dir, 'image.tar'));
  try {
    t.deepEqual(image.config.config?.Env, ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'GREETING=hello']);
    t.deepEqual(image.config.config?.Cmd, ['/bin/bash']);
  } finally {
    await image.close();
  }
  const exported = join(dir, 'export.tar');
  t.is((await runDockvm(['export', join(dir, 'image.tar'), '-o', exported])).exitCode, 0);
  const { readTar } = await import('../../src/layer/tar.js');
  const { createReadStream } = await import('node:fs');
  let env = '';
  for await (const { entry, body } of readTar(createReadStream(exported), { source: exported })) {
    if (entry.path === 'srv/env') for await (const chunk of body) env += String(chunk);
  }
  t.regex(env, /^pid 1 in \/ as 0, HOME=\/root, GREETING=hello\n/);
  t.regex(env, /EXTRA=1 PATH=\/usr\/local\/sbin:/);
});

test('two builds of one spec give byte-identical archives, the one in a booted VM and the one in a VM restored from a snapshot', async (t) => {
  const dir = tempDir(t);
  const spec = writeSpec(dir, { output: 'one.tar' });
  const qemu = await qemuCounter(t);
  // a snapshot folder of its own: the first build boots its VM, and a disk-less one is saved beside it
  const env = { ...qemu.env, DOCKVM_SNAPSHOT_DIR: join(dir, 'snapshots') };
  await build(t, spec, [], env);
  t.is(qemu.restores(), 0, 'the first build booted its VM');
  t.is(qemu.saves(), 1, 'and saved a snapshot in the background before its process ended');
  await build(t, spec, ['-o', join(dir, 'two.tar')], env);
  t.is(qemu.restores(), 1, 'the second build ran in a restored VM');
  t.is(qemu.vms(), 2);
  const digest = (file: string) => createHash('sha256').update(readFileSync(join(dir, file))).digest('hex');
  t.is(digest('one.tar'), digest('two.tar'));
});

test('FROM scratch: the bundled shell runs the script and leaves no trace, nor do the mount points', async (t) => {
  const dir = tempDir(t);
  const spec = join(dir, 'spec.json');
  writeFileSync(spec, JSON.stringify({ name: 'scratch-test', runAsRoot: 'mkdir -p /etc && echo hi > /etc/hello && ls / > /etc/root-listing', output: 'out.tar' }));
  const qemu = await qemuCounter(t);
  const result = await build(t, spec, [], qemu.env);
  t.is(qemu.vms(), 1, 'one VM ran the script');
  t.is(result.bootedVm, true);
  t.is((result.layers as unknown[]).length, 1);
  const layer = await newLayer(dir, join(dir, 'out.tar'));
  t.deepEqual([...layer.keys()], ['etc', 'etc/hello', 'etc/root-listing']);
});

test('without runAsRoot no VM boots; created "now" is not reproducible, the default is', async (t) => {
  const dir = tempDir(t);
  mkdirSync(join(dir, 'files'));
  writeFileSync(join(dir, 'files/hello'), 'hello\n');
  const spec = (created?: string) => {
    const path = join(dir, `spec-${created ?? 'default'}.json`);
    writeFileSync(path, JSON.stringify({ name: 'host-only', copyToRoot: 'files', extraCommands: 'mkdir -p tmp && chmod 1777 tmp', ...(created ? { created } : {}), output: `${uniqueName('o')}.tar` }));
    return path;
  };
  const qemu = await qemuCounter(t);
  const fixed = spec();
  const first = await build(t, fixed, [], qemu.env);
  const second = await build(t, fixed, [], qemu.env);
  t.is(first.configDigest, second.configDigest);
  const now = spec('now');
  const a = await build(t, now, [], qemu.env);
  await new Promise((resolve) => setTimeout(resolve, 1100));
  const b = await build(t, now, [], qemu.env);
  t.not(a.configDigest, b.configDigest);
  // an OCI layout output: --json names the blobs as written (gzip), as skopeo sees them
  const oci = await build(t, fixed, ['-o', `oci:${join(dir, 'layout')}`], qemu.env);
  t.is(qemu.vms(), 0, 'five builds, no VM');
  t.deepEqual([first, second, a, b, oci].map((result) => result.bootedVm), [false, false, false, false, false]);
  const seen = JSON.parse((await execa('skopeo', ['inspect', `oci:${join(dir, 'layout')}`])).stdout) as { Layers: string[] };
  t.deepEqual((oci.layers as { digest: string }[]).map((l) => l.digest), seen.Layers);
  const layer = await newLayer(dir, first.output as string);
  t.like(layer.get('tmp'), { type: 'directory', mode: 0o1777 });
  t.like(layer.get('hello'), { type: 'file', mode: 0o644 });
});

test('network: true with DOCKVM_HOST_LOOPBACK=1 reaches an HTTP server on the host\'s loopback; the resolver is QEMU\'s, and leaves no trace', async (t) => {
  const { createServer } = await import('node:http');
  const server = createServer((_req, res) => res.end('served by the host\n'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.close());
  const port = (server.address() as { port: number }).port;
  const dir = tempDir(t);
  const spec = join(dir, 'spec.json');
  // asked for, QEMU's user-mode network shows the host's loopback as 10.0.2.2 (closed by default:
  // test/security/network.test.ts); bash's /dev/tcp needs no curl
  const script = `bash -c 'exec 3<>/dev/tcp/10.0.2.2/${port}; printf "GET / HTTP/1.0\\r\\n\\r\\n" >&3; cat <&3' | tail -n 1 > /srv/fetched\ncp /etc/resolv.conf /srv/resolv`;
  writeFileSync(spec, JSON.stringify({ name: 'network-test', fromImage: debianFixture(), network: true, runAsRoot: script, output: 'out.tar' }));
  await build(t, spec, [], { DOCKVM_HOST_LOOPBACK: '1' });
  const exported = join(dir, 'export.tar');
  t.is((await runDockvm(['export', join(dir, 'out.tar'), '-o', exported])).exitCode, 0);
  const files = await contents(exported, ['srv/fetched', 'srv/resolv']);
  t.is(files.get('srv/fetched'), 'served by the host\n');
  t.is(files.get('srv/resolv'), 'nameserver 10.0.2.3\n');
  const layer = await newLayer(dir, join(dir, 'out.tar'));
  t.false(layer.has('etc/resolv.conf'), 'the resolv.conf mount point is gone');
});

async function contents(tar: string, paths: string[]): Promise<Map<string, string>> {
  const { readTar } = await import('../../src/layer/tar.js');
  const { createReadStream } = await import('node:fs');
  const found = new Map<string, string>();
  for await (const { entry, body } of readTar(createReadStream(tar), { source: tar })) {
    if (!paths.includes(entry.path)) continue;
    let text = '';
    for await (const chunk of body) text += String(chunk);
    found.set(entry.path, text);
  }
  return found;
}
