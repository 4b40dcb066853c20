import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { fromOverlayUpperEntry, toOverlayEntry, OPAQUE_XATTR } from '../../src/layer/overlay.js';
import { squashfsForLayer } from '../../src/layer/squashfs.js';
import { readTar, type TarEntry } from '../../src/layer/tar.js';
import { sha256 } from '../../src/image/digest.js';
import type { Layer } from '../../src/image/image.js';
import { layerTar } from '../fixtures/assemble.js';
import { collect } from '../helpers/streams.js';

const base = { mode: 0o644, uid: 0, gid: 0, size: 0, mtime: 5 } as const;
const dir = (path: string, extra: Partial<TarEntry> = {}): TarEntry => ({ ...base, path, type: 'directory', mode: 0o755, ...extra });
const file = (path: string, extra: Partial<TarEntry> = {}): TarEntry => ({ ...base, path, type: 'file', ...extra });

test('OCI → overlay: a whiteout becomes a 0/0 character device, an opaque marker an xattr on its directory', (t) => {
  t.deepEqual(toOverlayEntry(file('etc/.wh.motd', { uid: 7 }), new Set()), [
    { path: 'etc/motd', type: 'character-device', mode: 0, uid: 7, gid: 0, size: 0, mtime: 5, devmajor: 0, devminor: 0 },
  ]);
  t.deepEqual(toOverlayEntry(file('etc/.wh..wh..opq'), new Set(['etc'])), []);
  const [etc] = toOverlayEntry(dir('etc'), new Set(['etc']));
  t.deepEqual(etc!.xattrs, { [OPAQUE_XATTR]: Buffer.from('y') });
  // overlay bookkeeping in a layer means nothing in OCI and must not steer the guest's overlay
  const [other] = toOverlayEntry(dir('var', { xattrs: { 'trusted.overlay.opaque': Buffer.from('y'), 'user.keep': Buffer.from('1') } }), new Set());
  t.deepEqual(other!.xattrs, { 'user.keep': Buffer.from('1') });
  // what the lower's image can hold is the caller's to say (squashfs has no system.* namespace)
  const acl = file('etc/acl', { xattrs: { 'system.posix_acl_access': Buffer.from([2, 0]), 'security.capability': Buffer.from([1]) } });
  t.deepEqual(toOverlayEntry(acl, new Set())[0]!.xattrs, acl.xattrs);
  t.deepEqual(toOverlayEntry(acl, new Set(), (name) => name.startsWith('security.'))[0]!.xattrs, { 'security.capability': Buffer.from([1]) });
});

test('upper → OCI: devices 0/0 become .wh. files, opaque directories get their marker unless new', (t) => {
  const lowers = new Set(['etc/apt']);
  const existed = (path: string) => lowers.has(path);
  t.deepEqual(fromOverlayUpperEntry({ ...base, path: 'etc/motd', type: 'character-device', mode: 0, devmajor: 0, devminor: 0 }, existed), [
    { path: 'etc/.wh.motd', type: 'file', mode: 0, uid: 0, gid: 0, size: 0, mtime: 5 },
  ]);
  const opaque = { 'trusted.overlay.opaque': Buffer.from('y'), 'trusted.overlay.origin': Buffer.from([1, 2]), 'security.capability': Buffer.from([3]) };
  t.deepEqual(fromOverlayUpperEntry(dir('etc/apt', { xattrs: opaque }), existed), [
    dir('etc/apt', { xattrs: { 'security.capability': Buffer.from([3]) } }),
    file('etc/apt/.wh..wh..opq', { mode: 0o755 }),
  ]);
  t.deepEqual(fromOverlayUpperEntry(dir('srv/new', { xattrs: opaque }), existed), [dir('srv/new', { xattrs: { 'security.capability': Buffer.from([3]) } })]);
  // a real device keeps its numbers
  const null_ = { ...base, path: 'dev/null', type: 'character-device' as const, devmajor: 1, devminor: 3 };
  t.deepEqual(fromOverlayUpperEntry(null_, existed), [null_]);
});

function memoryLayer(tar: Buffer): Layer {
  const diffId = sha256(tar);
  return {
    diffId,
    blob: async () => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: diffId, size: tar.length }),
    openBlob: async () => Readable.from([tar]),
    openTar: async () => Readable.from([tar]),
  };
}

test('a layer becomes a cached squashfs image in overlay form (checked with sqfs2tar)', async (t) => {
  const cache = mkdtempSync(join(tmpdir(), 'dockvm-sqfs-'));
  t.teardown(() => rmSync(cache, { recursive: true, force: true }));
  const tar = await layerTar([
    { path: 'etc', type: 'directory' },
    { path: 'etc/.wh.motd' },
    { path: 'etc/keep', content: 'keep\n', mode: 0o4755, xattrs: { 'security.capability': Buffer.from([1, 0, 0, 2, 0x80, 0xff]) } },
    { path: 'opt/app/.wh..wh..opq' }, // marker whose directory has no entry of its own
    { path: 'var', type: 'directory' },
    { path: 'var/.wh..wh..opq' }, // marker after its directory's entry
  ]);
  const layer = memoryLayer(tar);
  const image = await squashfsForLayer(layer, { source: 'test', cacheDir: cache });
  t.is(image, join(cache, 'lowers', `${layer.diffId.slice(7)}.sqfs`));
  t.is(await squashfsForLayer(layer, { source: 'test', cacheDir: cache }), image, 'second call uses the cache');

  const out = execFileSync('sqfs2tar', [image], { maxBuffer: 1 << 24 });
  const entries = new Map<string, TarEntry>();
  for await (const { entry, body } of readTar(Readable.from([out]), { source: 'sqfs2tar' })) {
    entries.set(entry.path, entry);
    if (entry.path === 'etc/keep') t.is((await collect(body)).toString(), 'keep\n');
  }
  t.like(entries.get('etc/motd'), { type: 'character-device', devmajor: 0, devminor: 0 });
  t.false(entries.has('etc/.wh.motd'));
  t.like(entries.get('etc/keep'), { mode: 0o4755 });
  t.deepEqual(entries.get('etc/keep')!.xattrs?.['security.capability'], Buffer.from([1, 0, 0, 2, 0x80, 0xff]));
  t.deepEqual(entries.get('var')!.xattrs?.[OPAQUE_XATTR], Buffer.from('y'));
  t.deepEqual(entries.get('opt/app')!.xattrs?.[OPAQUE_XATTR], Buffer.from('y'));
  t.false([...entries.keys()].some((path) => path.includes('.wh.')), 'no OCI whiteout survives');
});
