// The host's reading of the build VM's upper manifest, from manifests written here: what honest ones
// turn into (holes, unwritten and preallocated extents, inline contents), and how hostile ones are
// refused (paths, extents outside the disk or overlapping, counts that lie, truncation).
import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeLayerFromEntries } from '../../src/layer/layer-file.js';
import { readUpperManifest, tarMtime, tarXattrName } from '../../src/layer/upper-manifest.js';
import { listing } from '../helpers/filesystem.js';

interface Extent {
  logical: number;
  physical: number;
  length: number;
  unwritten?: boolean;
}

interface Record {
  path: string;
  type?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  seconds?: bigint;
  nanoseconds?: number;
  size?: number;
  major?: number;
  minor?: number;
  link?: string;
  xattrs?: [string, Buffer][];
  /** 'x' with extents, 'i' with the content, or none (0) */
  extents?: Extent[];
  inline?: Buffer;
}

const u8 = (v: number) => Buffer.from([v]);
const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
};
const u64 = (v: number | bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(v));
  return b;
};
const bytes = (s: string | Buffer) => {
  const b = typeof s === 'string' ? Buffer.from(s, 'latin1') : s;
  return Buffer.concat([u32(b.length), b]);
};

/** A manifest as vm/upper-manifest.c writes it. */
function manifest(records: Record[], end: { count?: number } = {}): Buffer {
  const parts: Buffer[] = [Buffer.from('DVMUPPR1')];
  for (const r of records) {
    const type = r.type ?? 'f';
    parts.push(u8(0x45), bytes(r.path), Buffer.from(type), u32(r.mode ?? 0o644), u32(r.uid ?? 0), u32(r.gid ?? 0));
    const seconds = Buffer.alloc(8);
    seconds.writeBigInt64BE(r.seconds ?? 1000n);
    parts.push(seconds, u32(r.nanoseconds ?? 0), u64(r.size ?? 0), u32(r.major ?? 0), u32(r.minor ?? 0), bytes(r.link ?? ''));
    parts.push(u32(r.xattrs?.length ?? 0));
    for (const [name, value] of r.xattrs ?? []) parts.push(bytes(name), bytes(value));
    if (r.inline) parts.push(u8(0x69), r.inline);
    else if (r.extents) {
      parts.push(u8(0x78), u32(r.extents.length));
      for (const e of r.extents) parts.push(u64(e.logical), u64(e.physical), u64(e.length), u32(e.unwritten ? 1 : 0));
    } else parts.push(u8(0));
  }
  parts.push(u8(0x5a), u64(end.count ?? records.length));
  return Buffer.concat(parts);
}

const diskByte = (offset: number) => (offset % 250) + 1;

function setup(t: { teardown(fn: () => void): void }, records: Record[], end: { count?: number } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-manifest-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // the "scratch disk": 64 KiB with no zero byte (zeros in a body come from holes only)
  const disk = join(dir, 'disk');
  writeFileSync(disk, Buffer.from(Array.from({ length: 65536 }, (_, i) => diskByte(i))));
  const path = join(dir, 'out');
  const data = manifest(records, end);
  writeFileSync(path, Buffer.concat([data, Buffer.alloc(4096, 0xee)])); // the rest of an output disk
  return { dir, disk, source: { path, size: data.length, disk, source: 'test manifest' } };
}


/** The layer the entries make, as path → (entry, content). */
async function layerOf(s: ReturnType<typeof setup>) {
  const out = join(s.dir, 'layer.tar');
  await writeLayerFromEntries(readUpperManifest(s.source), out, { source: 'test manifest' });
  return listing(out);
}

async function contentOf(s: ReturnType<typeof setup>, path: string): Promise<Buffer> {
  const { readTar } = await import('../../src/layer/tar.js');
  const { createReadStream } = await import('node:fs');
  const out = join(s.dir, 'layer.tar');
  await writeLayerFromEntries(readUpperManifest(s.source), out, { source: 'test manifest' });
  for await (const { entry, body } of readTar(createReadStream(out), { source: out })) {
    if (entry.path !== path) continue;
    const chunks: Buffer[] = [];
    for await (const chunk of body) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  }
  throw new Error(`no ${path}`);
}

test('a file\'s extents become its content: holes and unwritten extents read as zeros, blocks past the end are cut off', async (t) => {
  const s = setup(t, [
    {
      path: 'f',
      size: 10_000,
      extents: [
        { logical: 0, physical: 100, length: 1000 },
        // 1000..2000 a hole
        { logical: 2000, physical: 5000, length: 1000, unwritten: true },
        { logical: 3000, physical: 9000, length: 4096 * 4 }, // reaches past the end: only 7000 bytes used
      ],
    },
  ]);
  const content = await contentOf(s, 'f');
  const expected = Buffer.alloc(10_000);
  for (let i = 0; i < 1000; i++) expected[i] = diskByte(100 + i);
  for (let i = 3000; i < 10_000; i++) expected[i] = diskByte(9000 + i - 3000);
  t.true(content.equals(expected));
});

test('a large file (streamed piece by piece) ends in zeros where its last extent ends', async (t) => {
  const size = 3 * 2 ** 20;
  const s = setup(t, [{ path: 'big', size, extents: [{ logical: 2 ** 20, physical: 4096, length: 8192 }] }]);
  const content = await contentOf(s, 'big');
  t.is(content.length, size);
  t.is(content.subarray(0, 2 ** 20).some((b) => b !== 0), false);
  t.true(content.subarray(2 ** 20, 2 ** 20 + 8192).equals(Buffer.from(Array.from({ length: 8192 }, (_, i) => diskByte(4096 + i)))));
  t.is(content.subarray(2 ** 20 + 8192).some((b) => b !== 0), false);
});

test('inline contents, links, devices, xattrs and mtimes come through as GNU tar would have stored them', async (t) => {
  const s = setup(t, [
    { path: 'd', type: 'd', mode: 0o1777, xattrs: [['trusted.overlay.opaque', Buffer.from('y')]] },
    { path: 'd/in', size: 5, inline: Buffer.from('hello'), xattrs: [['user.a=b%', Buffer.from([0, 255])]] },
    { path: 'd/hard', type: 'h', link: 'd/in' },
    { path: 'd/sym', type: 'l', link: '../nowhere', seconds: -6n, nanoseconds: 500_000_000 },
    { path: 'd/dev', type: 'c', major: 4095, minor: 1_048_575, uid: 3_000_000 },
    { path: 'd/fifo', type: 'p', seconds: 981173106n, nanoseconds: 999_999_999 },
  ]);
  const layer = await layerOf(s);
  t.like(layer.get('d'), { type: 'directory', mode: 0o1777, xattrs: { 'trusted.overlay.opaque': '79' } });
  // normalised: the first of the linked paths holds the content
  t.like(layer.get('d/hard'), { type: 'file', size: 5, xattrs: { 'user.a%3Db%25': '00ff' } });
  t.like(layer.get('d/in'), { type: 'link', linkname: 'd/hard' });
  t.like(layer.get('d/sym'), { type: 'symlink', linkname: '../nowhere' });
  t.like(layer.get('d/dev'), { type: 'character-device', dev: '4095,1048575', uid: 3_000_000 });
  t.like(layer.get('d/fifo'), { type: 'fifo', mtime: 981173107 });
  t.is((await contentOf(s, 'd/hard')).toString(), 'hello');
});

test('tarMtime and tarXattrName are GNU tar\'s decimal mtimes and keyword encoding', (t) => {
  t.is(tarMtime(5, 0), 5);
  t.is(tarMtime(5, 999_999_999), 5, 'small numbers keep their nanoseconds exactly');
  t.is(tarMtime(981173106, 999_999_999), 981173107, 'a double cannot hold S.999999999 for S near 1e9');
  t.is(tarMtime(-6, 500_000_000), -6, 'written -5.5');
  t.is(tarMtime(-1, 1), -1, 'written -0.999999999');
  t.is(tarXattrName('user.a=b%c'), 'user.a%3Db%25c');
});

const bad: [string, Record[], RegExp, { count?: number }?][] = [
  ['an absolute path', [{ path: '/etc/passwd', size: 0, extents: [] }], /absolute path/],
  ['a ".." component', [{ path: 'a/../../x', size: 0, extents: [] }], /"\.\." component/],
  ['a path that is not canonical', [{ path: 'a//b', size: 0, extents: [] }], /not a plain relative path/],
  ['the root', [{ path: '.', type: 'd' }], /not a plain relative path/],
  ['a hard link out of the layer', [{ path: 'h', type: 'h', link: '../../etc/shadow' }], /"\.\." component/],
  ['an extent beyond the disk', [{ path: 'f', size: 100, extents: [{ logical: 0, physical: 65500, length: 100 }] }], /beyond the end of the scratch disk/],
  ['overlapping extents', [{ path: 'f', size: 8192, extents: [{ logical: 0, physical: 0, length: 4096 }, { logical: 2048, physical: 0, length: 4096 }] }], /out of order or overlapping/],
  ['an empty extent', [{ path: 'f', size: 10, extents: [{ logical: 0, physical: 0, length: 0 }] }], /empty/],
  ['inline content longer than the manifest', [{ path: 'f', size: 1_000_000, inline: Buffer.from('short') }], /ends early/],
  ['a size for a directory', [{ path: 'd', type: 'd', size: 5 }], /a size for a directory/],
  ['a mode beyond 07777', [{ path: 'f', mode: 0o170777, size: 0, extents: [] }], /mode beyond 07777/],
  ['an unknown type', [{ path: 's', type: 's' }], /unknown entry type/],
  ['a symlink with content', [{ path: 's', type: 'l', link: 'x', inline: Buffer.alloc(0) }], /content for a symlink/],
  ['a NUL in a path', [{ path: 'a\0b', size: 0, extents: [] }], /not a plain relative path/],
  ['too many entries claimed', [{ path: 'f', size: 0, extents: [] }], /entry count/, { count: 2 }],
];

for (const [what, records, message, end] of bad) {
  test(`a manifest with ${what} is refused`, async (t) => {
    const s = setup(t, records, end);
    await t.throwsAsync(() => layerOf(s), { message });
  });
}

test('a truncated manifest, one with bytes after its end, or with a wrong magic is refused', async (t) => {
  const s = setup(t, [{ path: 'f', size: 5, inline: Buffer.from('hello') }]);
  await t.throwsAsync(() => layerOf({ ...s, source: { ...s.source, size: s.source.size - 3 } }), { message: /ends early/ });
  await t.throwsAsync(() => layerOf({ ...s, source: { ...s.source, size: s.source.size + 1 } }), { message: /bytes follow its end/ });
  await t.throwsAsync(() => layerOf({ ...s, source: { ...s.source, size: s.source.size + 10_000 } }), { message: /the disk holds/ });
  writeFileSync(s.source.path, Buffer.from('not a manifest at all'));
  await t.throwsAsync(() => layerOf({ ...s, source: { ...s.source, size: 21 } }), { message: /magic/ });
});
