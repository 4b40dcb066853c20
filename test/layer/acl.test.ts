// POSIX ACLs on the host side: the Debian fixture's ACL layer holds what a kernel really stores, a layer
// in overlay form keeps them for the ext4 lower (squashfs cannot hold them), and the cache, not a scan of
// the layer, says which kind of lower a layer has. The VM side is test/build/acl.test.ts.
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { execa } from 'execa';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { ext4LowerPath, lowerForLayer } from '../../src/build/lowers.js';
import { sha256 } from '../../src/image/digest.js';
import type { Layer } from '../../src/image/image.js';
import { scanOverlayForm, writeOverlayForm } from '../../src/layer/overlay-form.js';
import { lowerImagesDir, squashfsPath } from '../../src/layer/squashfs.js';
import { readTar, TarWriter, type TarEntry } from '../../src/layer/tar.js';
import { openImage } from '../../src/transport/index.js';
import { layerTar } from '../fixtures/assemble.js';
import { debianFixture } from '../fixtures/debian.js';
import { describeAcl, posixAcl } from '../fixtures/posix-acl.js';
import { hasTool, uniqueName } from '../helpers/peers.js';
import { collect } from '../helpers/streams.js';

const ACCESS = posixAcl('u::rw-,u:1000:r--,g::r--,m::r--,o::---');
const DEFAULT = posixAcl('u::rwx,g::r-x,g:100:rwx,m::rwx,o::r-x');

function memoryLayer(tar: Buffer, openTar?: () => Promise<Readable>): Layer {
  const diffId = sha256(tar);
  return {
    diffId,
    blob: async () => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: diffId, size: tar.length }),
    openBlob: async () => Readable.from([tar]),
    openTar: openTar ?? (async () => Readable.from([tar])),
  };
}

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-acl-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function entriesOf(tar: Buffer): Promise<TarEntry[]> {
  const entries: TarEntry[] = [];
  for await (const { entry } of readTar(Readable.from([tar]), { source: 'test' })) entries.push(entry);
  return entries;
}

test('a layer in overlay form for an ext4 lower keeps both ACLs byte for byte, and declares implied directories as tar2sqfs makes them', async (t) => {
  const layer = memoryLayer(
    await layerTar([
      { path: 'srv/team/notes', content: 'n', mode: 0o640, xattrs: { 'system.posix_acl_access': ACCESS } }, // srv, srv/team implied
      { path: 'srv/drop', type: 'directory', xattrs: { 'system.posix_acl_default': DEFAULT, 'trusted.overlay.origin': Buffer.from('x') } },
      { path: 'srv/.wh.gone' },
    ]),
  );
  const scan = await scanOverlayForm(layer, 'test');
  t.is(scan.posixAcls, 2);
  const writer = new TarWriter();
  const out = collect(writer.stream);
  t.is(await writeOverlayForm(layer, writer, scan, { what: 'test', declareImpliedDirs: true }), 5);
  writer.finish();
  const entries = await entriesOf(await out);
  t.deepEqual(entries.map((e) => e.path), ['srv', 'srv/team', 'srv/team/notes', 'srv/drop', 'srv/gone']);
  for (const implied of entries.slice(0, 2)) t.like(implied, { type: 'directory', mode: 0o755, uid: 0, gid: 0, mtime: 0 });
  t.deepEqual(entries[2]!.xattrs, { 'system.posix_acl_access': ACCESS });
  t.deepEqual(entries[3]!.xattrs, { 'system.posix_acl_default': DEFAULT }, 'overlay bookkeeping dropped, the ACL kept');
  t.like(entries[4], { type: 'character-device', devmajor: 0, devminor: 0 });
});

test('the cache says which lower a layer has: a cached ext4 image is used before a squashfs one, without reading the layer', async (t) => {
  const cache = tempDir(t);
  const unread = memoryLayer(await layerTar([{ path: 'f', content: 'f' }]), async () => {
    throw new Error('the layer was read');
  });
  mkdirSync(lowerImagesDir(cache));
  writeFileSync(squashfsPath(unread, cache), 'a squashfs image');
  t.is(await lowerForLayer(unread, { source: 'test', cacheDir: cache }), squashfsPath(unread, cache));
  writeFileSync(ext4LowerPath(unread, cache), 'an ext4 image');
  t.is(await lowerForLayer(unread, { source: 'test', cacheDir: cache }), ext4LowerPath(unread, cache));
});

test('a layer without ACLs still becomes a squashfs lower, made on the host', async (t) => {
  const cache = tempDir(t);
  const layer = memoryLayer(await layerTar([{ path: 'etc', type: 'directory' }, { path: 'etc/cap', content: 'c', xattrs: { 'security.capability': Buffer.from([1, 0, 0, 2]) } }]));
  const lower = await lowerForLayer(layer, { source: 'test', cacheDir: cache });
  t.is(lower, squashfsPath(layer, cache));
  const listed = execFileSync('sqfs2tar', [lower], { maxBuffer: 1 << 20 });
  const cap = (await entriesOf(listed)).find((e) => e.path === 'etc/cap');
  t.deepEqual(cap?.xattrs, { 'security.capability': Buffer.from([1, 0, 0, 2]) });
});

/** Whether this host's temp directory takes POSIX ACL xattrs (ext4, tmpfs and most others do). */
function hostTakesAcls(): boolean {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-acl-probe-'));
  try {
    execFileSync('setfattr', ['-n', 'system.posix_acl_access', '-v', `0x${ACCESS.toString('hex')}`, dir], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** `test` when `missing` is undefined; else skipped with the reason, or under CI=true a failure. */
function needs(missing: string | undefined): (title: string, fn: (t: ExecutionContext) => Promise<void>) => void {
  if (missing === undefined) return test;
  if (process.env.CI === 'true') return (title) => test(title, (t) => t.fail(`prerequisite missing: ${missing}`));
  return (title, fn) => test.skip(`${title} (skipped: ${missing})`, fn);
}

needs(hostTakesAcls() ? undefined : 'this host\'s temp directory takes no POSIX ACLs')('the fixture\'s ACL layer holds what a kernel stores: GNU tar --xattrs unpacks it on the host and getfattr reads the same bytes back', async (t) => {
  const image = await openImage(debianFixture());
  const dir = tempDir(t);
  const tar = join(dir, 'acl-layer.tar');
  const expected = new Map<string, Record<string, Buffer>>();
  try {
    const layer = image.layers[3]!; // layer 4: scripts/fixtures/debian-layers.ts posixAcls()
    const data = await collect(await layer.openTar());
    writeFileSync(tar, data);
    for (const entry of await entriesOf(data)) if (entry.xattrs) expected.set(entry.path, entry.xattrs);
  } finally {
    await image.close();
  }
  t.deepEqual([...expected.keys()], ['srv/shared', 'srv/shared/report', 'srv/inbox']);
  t.deepEqual(Object.keys(expected.get('srv/shared')!).sort(), ['system.posix_acl_access', 'system.posix_acl_default']);
  const root = join(dir, 'root');
  mkdirSync(root);
  execFileSync('tar', ['-C', root, '--xattrs', '--xattrs-include=*', '-xf', tar]);
  for (const [path, xattrs] of expected) {
    for (const [name, value] of Object.entries(xattrs)) {
      const read = execFileSync('getfattr', ['--absolute-names', '--only-values', '-n', name, join(root, path)]);
      t.deepEqual(read, value, `${path} ${name}: ${describeAcl(read).join(',')} is not ${describeAcl(value).join(',')}`);
    }
  }
});

const podmanMissing = !hasTool('podman') || !hasTool('skopeo') ? 'podman or skopeo is not installed' : process.getuid?.() !== 0 ? 'podman image mount needs root' : undefined;

needs(podmanMissing)('a peer unpacks the same form: podman applies the fixture\'s ACL records to the files it unpacks (podman image mount, getfattr)', async (t) => {
  const image = await openImage(debianFixture());
  const expected = new Map<string, Record<string, Buffer>>();
  try {
    for (const entry of await entriesOf(await collect(await image.layers[3]!.openTar()))) if (entry.xattrs) expected.set(entry.path, entry.xattrs);
  } finally {
    await image.close();
  }
  const tag = `localhost/dockvm-test/${uniqueName('acl')}:1`;
  // under a name of its own (podman load would use the fixture's, which other tests load and remove)
  await execa('skopeo', ['copy', '--quiet', `docker-archive:${debianFixture()}`, `containers-storage:${tag}`]);
  t.teardown(async () => {
    await execa('podman', ['image', 'unmount', '--force', tag], { reject: false });
    await execa('podman', ['rmi', '--force', tag], { reject: false });
  });
  const root = (await execa('podman', ['image', 'mount', tag])).stdout.trim();
  for (const [path, xattrs] of expected) {
    for (const [name, value] of Object.entries(xattrs)) {
      t.deepEqual(execFileSync('getfattr', ['--absolute-names', '--only-values', '-n', name, join(root, path)]), value, `${path} ${name}`);
    }
  }
});
