import test from 'ava';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { flattenImage, writeFlattened, type FlattenOptions } from '../../src/flatten/flatten.js';
import { readTar, type TarEntry } from '../../src/layer/tar.js';
import { DigestMismatchError, TarFormatError, UnsafeTarEntryError } from '../../src/errors.js';
import { sha256 } from '../../src/image/digest.js';
import { layerTar } from '../fixtures/assemble.js';
import { memoryImage } from '../helpers/memory-image.js';
import { collect } from '../helpers/streams.js';

type Spec = Parameters<typeof layerTar>[0][number];
type Got = [TarEntry, string];

const CAP = Buffer.from('0100000200200000000000000000000000000000', 'hex');

/** The exported tar of an image made of these layers (bottom first). */
async function exportTar(layers: Spec[][], options: FlattenOptions & { inPlace?: boolean } = {}): Promise<Buffer> {
  const image = memoryImage(await Promise.all(layers.map((entries) => layerTar(entries))), { repoTag: 'test/img:1', inPlace: options.inPlace ?? false });
  try {
    return await collect(flattenImage(image, options));
  } finally {
    image.dispose();
  }
}

/** Every entry of a tar with its content (latin1). */
async function entriesOf(tar: Buffer): Promise<Got[]> {
  const got: Got[] = [];
  for await (const { entry, body } of readTar(Readable.from([tar]), { source: 'export' })) got.push([entry, (await collect(body)).toString('latin1')]);
  return got;
}

const exported = async (layers: Spec[][], options?: FlattenOptions & { inPlace?: boolean }) => entriesOf(await exportTar(layers, options));

// What readTar gives back for the entries layerTar writes (its defaults: mode 644/755/777, root, mtime 1).
const base = { uid: 0, gid: 0, mtime: 1 };
const file = (path: string, content = '', extra: Partial<TarEntry> = {}): Got => [
  { path, type: 'file', mode: 0o644, ...base, size: Buffer.byteLength(content, 'latin1'), ...extra },
  content,
];
const dir = (path: string, extra: Partial<TarEntry> = {}): Got => [{ path, type: 'directory', mode: 0o755, ...base, size: 0, ...extra }, ''];
const symlink = (path: string, linkname: string): Got => [{ path, type: 'symlink', mode: 0o777, ...base, size: 0, linkname }, ''];
const hardlink = (path: string, linkname: string, extra: Partial<TarEntry> = {}): Got => [
  { path, type: 'link', mode: 0o644, ...base, size: 0, linkname, ...extra },
  '',
];

test('the topmost entry of a path wins; lower entries show where nothing covers them', async (t) => {
  const got = await exported([
    [{ path: 'etc', type: 'directory' }, { path: 'etc/a', content: 'one' }, { path: 'etc/b', content: 'bee' }],
    [{ path: 'etc', type: 'directory', mode: 0o700 }, { path: 'etc/a', content: 'two!', mode: 0o600, uid: 1000, gid: 100 }],
  ]);
  t.deepEqual(got, [dir('etc', { mode: 0o700 }), file('etc/a', 'two!', { mode: 0o600, uid: 1000, gid: 100 }), file('etc/b', 'bee')]);
});

test('a whiteout deletes a file, or a directory and everything under it, from lower layers only', async (t) => {
  const got = await exported([
    [
      { path: 'a', content: 'a' },
      { path: 'b', content: 'old b' },
      { path: 'd', type: 'directory' },
      { path: 'd/x', content: 'x' },
      { path: 'd/sub', type: 'directory' },
      { path: 'd/sub/y', content: 'y' },
      { path: 'keep', content: 'k' },
    ],
    // `b` beside its own whiteout: the whiteout applies to the layers below, the new `b` stays.
    [{ path: '.wh.a' }, { path: 'b', content: 'new b' }, { path: '.wh.b' }, { path: '.wh.d' }],
  ]);
  t.deepEqual(got, [file('b', 'new b'), file('keep', 'k')]);
});

test('an opaque directory hides what lower layers put in it, whether its marker comes before or after its siblings', async (t) => {
  const got = await exported([
    [
      { path: 'o', type: 'directory' },
      { path: 'o/old', content: '1' },
      { path: 'o/sub', type: 'directory' },
      { path: 'o/sub/old', content: '2' },
      { path: 'p', type: 'directory' },
      { path: 'p/old', content: '3' },
      { path: 'q', type: 'directory' },
      { path: 'q/kept', content: '4' },
    ],
    [
      { path: 'o', type: 'directory', mode: 0o700 },
      { path: 'o/.wh..wh..opq' },
      { path: 'o/new', content: 'n' },
      { path: 'p', type: 'directory' },
      { path: 'p/new', content: 'm' },
      { path: 'p/.wh..wh..opq' },
    ],
  ]);
  t.deepEqual(got, [dir('o', { mode: 0o700 }), file('o/new', 'n'), dir('p'), file('p/new', 'm'), dir('q'), file('q/kept', '4')]);
});

test('an opaque directory hides only layers below its own', async (t) => {
  const got = await exported([
    [{ path: 'o', type: 'directory' }, { path: 'o/bottom', content: 'b' }],
    [{ path: 'o', type: 'directory' }, { path: 'o/.wh..wh..opq' }, { path: 'o/middle', content: 'm' }],
    [{ path: 'o', type: 'directory' }, { path: 'o/top', content: 't' }],
  ]);
  t.deepEqual(got, [dir('o'), file('o/middle', 'm'), file('o/top', 't')]);
});

test('a file replaced by a directory and back again, and the other way round', async (t) => {
  const got = await exported([
    [{ path: 'f', content: 'first file' }, { path: 'd', type: 'directory' }, { path: 'd/first', content: '1' }],
    [{ path: 'f', type: 'directory' }, { path: 'f/child', content: 'c' }, { path: 'd', content: 'd is a file now' }],
    [{ path: 'f', content: 'file again' }, { path: 'd', type: 'directory', mode: 0o750 }, { path: 'd/again', content: 'a' }],
  ]);
  // Nothing of the first directory `d` comes back: the file between them ended it.
  t.deepEqual(got, [dir('d', { mode: 0o750 }), file('d/again', 'a'), file('f', 'file again')]);
});

test('what lower layers have under a path an upper layer made a non-directory is dropped', async (t) => {
  const got = await exported([
    [
      { path: 's', type: 'directory' },
      { path: 's/x', content: 'x' },
      { path: 'f', type: 'directory' },
      { path: 'f/y', content: 'y' },
    ],
    [
      { path: 's', type: 'symlink', linkname: '/elsewhere' },
      { path: 'f', content: 'file' },
    ],
  ]);
  t.deepEqual(got, [file('f', 'file'), symlink('s', '/elsewhere')]);
});

test('hard links: the first path of a group in output order carries the content, the others link to it', async (t) => {
  const got = await exported([
    [
      { path: 'bin', type: 'directory' },
      { path: 'bin/zz', content: 'zz', mode: 0o4755, xattrs: { 'security.capability': CAP } },
      { path: 'bin/aa', type: 'link', linkname: 'bin/zz', mode: 0o4755 },
      { path: 'bin/mm', type: 'link', linkname: 'bin/zz', mode: 0o4755 },
    ],
  ]);
  const meta = { mode: 0o4755, xattrs: { 'security.capability': CAP } };
  t.deepEqual(got, [dir('bin'), file('bin/aa', 'zz', meta), hardlink('bin/mm', 'bin/aa', meta), hardlink('bin/zz', 'bin/aa', meta)]);
});

test('a hard link whose target an upper layer deleted or replaced keeps the target\'s content', async (t) => {
  const got = await exported([
    [
      { path: 'gone', content: 'deleted content', mode: 0o600, uid: 7 },
      { path: 'l1', type: 'link', linkname: 'gone', mode: 0o600, uid: 7 },
      { path: 'l2', type: 'link', linkname: 'gone', mode: 0o600, uid: 7 },
      { path: 'old', content: 'old content' },
      { path: 'm', type: 'link', linkname: 'old' },
      { path: 'sym', type: 'symlink', linkname: 'target' },
      { path: 'symlink-link', type: 'link', linkname: 'sym', mode: 0o777 },
    ],
    [{ path: '.wh.gone' }, { path: 'old', content: 'new content' }, { path: '.wh.sym' }],
  ]);
  t.deepEqual(got, [
    file('l1', 'deleted content', { mode: 0o600, uid: 7 }),
    hardlink('l2', 'l1', { mode: 0o600, uid: 7 }),
    file('m', 'old content'),
    file('old', 'new content'),
    symlink('symlink-link', 'target'),
  ]);
});

test('a hard link to a path its own layer rewrote later keeps the content it linked', async (t) => {
  const got = await exported([[{ path: 'a', content: 'first' }, { path: 'b', type: 'link', linkname: 'a' }, { path: 'a', content: 'second' }]]);
  t.deepEqual(got, [file('a', 'second'), file('b', 'first')]);
});

test('symlinks, devices, fifos, long and non-UTF-8 names, xattrs, special mode bits and large ids survive', async (t) => {
  const nonUtf8 = Buffer.from([0x66, 0xff, 0xfe, 0x6f]).toString('latin1');
  const long = `${'d'.repeat(120)}/${'n'.repeat(200)}`;
  const target = `/${'t'.repeat(150)}`;
  const got = await exported([
    [
      { path: '.', type: 'directory', mode: 0o700 }, // the root entry: skipped
      { path: 'dev', type: 'directory' },
      { path: 'dev/null', type: 'character-device', mode: 0o666, devmajor: 1, devminor: 3 },
      { path: 'dev/sda', type: 'block-device', mode: 0o660, gid: 6, devmajor: 8, devminor: 0 },
      { path: 'dev/fifo', type: 'fifo', mode: 0o600, uid: 3_000_000, gid: 3_000_001 },
      { path: 'tmp', type: 'directory', mode: 0o1777 },
      { path: 'sgid', type: 'directory', mode: 0o2775 },
      { path: nonUtf8, content: 'bytes' },
      { path: 'd'.repeat(120), type: 'directory' },
      { path: long, type: 'symlink', linkname: target },
      { path: 'ping', content: 'ping', mode: 0o4755, xattrs: { 'security.capability': CAP, 'user.note': Buffer.from('hi') } },
    ],
  ]);
  t.deepEqual(got, [
    dir('d'.repeat(120)),
    symlink(long, target),
    dir('dev'),
    [{ path: 'dev/fifo', type: 'fifo', mode: 0o600, uid: 3_000_000, gid: 3_000_001, mtime: 1, size: 0 }, ''],
    [{ path: 'dev/null', type: 'character-device', mode: 0o666, ...base, size: 0, devmajor: 1, devminor: 3 }, ''],
    [{ path: 'dev/sda', type: 'block-device', mode: 0o660, uid: 0, gid: 6, mtime: 1, size: 0, devmajor: 8, devminor: 0 }, ''],
    file(nonUtf8, 'bytes'),
    file('ping', 'ping', { mode: 0o4755, xattrs: { 'security.capability': CAP, 'user.note': Buffer.from('hi') } }),
    dir('sgid', { mode: 0o2775 }),
    dir('tmp', { mode: 0o1777 }),
  ]);
});

test('entries are sorted by path component by component, parents first, across layers', async (t) => {
  const got = await exported([
    [{ path: 'b', content: '' }, { path: 'a-b', content: '' }, { path: 'a', type: 'directory' }],
    [{ path: 'a.b', content: '' }, { path: 'a/z', content: '' }, { path: 'a', type: 'directory' }, { path: 'a/b', type: 'directory' }, { path: 'a/b/c', content: '' }],
  ]);
  t.deepEqual(
    got.map(([entry]) => entry.path),
    ['a', 'a/b', 'a/b/c', 'a/z', 'a-b', 'a.b', 'b'],
  );
});

test('parent directories no layer declares are not invented', async (t) => {
  const got = await exported([[{ path: 'x/y/file', content: 'deep' }], [{ path: 'x/y/other', content: 'o' }]]);
  t.deepEqual(got, [file('x/y/file', 'deep'), file('x/y/other', 'o')]);
});

test('an entry may sit under a directory an upper layer does not declare but a lower one does', async (t) => {
  const got = await exported([[{ path: 'a', type: 'directory', mode: 0o700 }], [{ path: 'a/x', content: 'x' }]]);
  t.deepEqual(got, [dir('a', { mode: 0o700 }), file('a/x', 'x')]);
});

test('mtimes are kept, or clamped to --mtime (min of the two)', async (t) => {
  const layers: Spec[][] = [[{ path: 'old', content: 'o', mtime: 5 }, { path: 'new', content: 'n', mtime: 2_000_000_000 }]];
  t.deepEqual((await exported(layers)).map(([e]) => [e.path, e.mtime]), [['new', 2_000_000_000], ['old', 5]]);
  t.deepEqual((await exported(layers, { mtime: 1_000 })).map(([e]) => [e.path, e.mtime]), [['new', 1_000], ['old', 5]]);
});

const MIXED: Spec[][] = [
  [
    { path: 'etc', type: 'directory' },
    { path: 'etc/passwd', content: 'root:x:0:0\n'.repeat(200) },
    { path: 'big', content: Buffer.alloc(3 << 20, 7) },
    { path: 'hl', type: 'link', linkname: 'big' },
    { path: 'gone', content: 'g' },
  ],
  [{ path: '.wh.gone' }, { path: 'etc', type: 'directory' }, { path: 'etc/.wh..wh..opq' }, { path: 'etc/hosts', content: '127.0.0.1 x\n' }],
];

test('the same image gives the same bytes, run after run, read in place or spooled', async (t) => {
  const spooled = await exportTar(MIXED);
  t.deepEqual(await exportTar(MIXED), spooled);
  t.deepEqual(await exportTar(MIXED, { inPlace: true }), spooled);
  t.deepEqual((await entriesOf(spooled)).map(([e]) => e.path), ['big', 'etc', 'etc/hosts', 'hl']);
  // A tar ends with two zero blocks.
  t.deepEqual(spooled.subarray(-1024), Buffer.alloc(1024));
});

test('spooled layers are removed at the end, also when the export fails', async (t) => {
  const spool = mkdtempSync(join(tmpdir(), 'dockvm-test-spool-'));
  t.teardown(() => rmSync(spool, { recursive: true, force: true }));
  await exportTar(MIXED, { tmpdir: spool });
  t.deepEqual(readdirSync(spool), []);
  await t.throwsAsync(exportTar([[{ path: 'a', type: 'symlink', linkname: '/etc' }], [{ path: 'a/passwd', content: 'x' }]], { tmpdir: spool }));
  t.deepEqual(readdirSync(spool), []);
});

test('an entry written through a symlink of a lower layer is refused, naming the image, layer and entries', async (t) => {
  const err = await t.throwsAsync(exportTar([[{ path: 'a', type: 'symlink', linkname: '/etc' }], [{ path: 'a/passwd', content: 'evil' }]]), {
    instanceOf: UnsafeTarEntryError,
  });
  t.regex(err!.message, /^test\/img:1: layer 2\/2 \(sha256:[0-9a-f]{64}\): entry "a\/passwd" lies under "a", but layer 1 below makes it a symbolic link \(-> "\/etc"\)/);
});

test('an entry under a non-directory of its own layer is refused too', async (t) => {
  const err = await t.throwsAsync(exportTar([[{ path: 'f', content: 'file' }, { path: 'f/x', content: 'x' }]]), { instanceOf: UnsafeTarEntryError });
  t.regex(err!.message, /layer 1\/1 .*entry "f\/x" lies under "f", but the same layer makes it a regular file/);
});

test('bad entries that an upper layer hides, or that an upper directory makes legitimate, are no error', async (t) => {
  // Layer 2 writes through the symlink, but layer 3 deletes `a` altogether.
  t.deepEqual(
    await exported([[{ path: 'a', type: 'symlink', linkname: '/etc' }], [{ path: 'a/passwd', content: 'x' }], [{ path: '.wh.a' }]]),
    [],
  );
  // An explicit directory entry replaces the symlink: the merged view is a directory.
  t.deepEqual(
    await exported([[{ path: 'a', type: 'symlink', linkname: '/etc' }], [{ path: 'a', type: 'directory' }, { path: 'a/passwd', content: 'x' }]]),
    [dir('a'), file('a/passwd', 'x')],
  );
});

test('a hard link to anything but an earlier entry of its own layer is refused', async (t) => {
  const cross = await t.throwsAsync(exportTar([[{ path: 't', content: 't' }], [{ path: 'l', type: 'link', linkname: 't' }]]), { instanceOf: TarFormatError });
  t.regex(cross!.message, /layer 2\/2 .*hard link "l" points to "t", which is not an earlier entry of the same layer/);
  const toDir = await t.throwsAsync(exportTar([[{ path: 'd', type: 'directory' }, { path: 'l', type: 'link', linkname: 'd' }]]), { instanceOf: TarFormatError });
  t.regex(toDir!.message, /hard link "l" points to "d", which is a directory/);
});

test('a layer whose bytes do not match its diff_id fails the export before the end of the tar', async (t) => {
  const tar = await layerTar([{ path: 'a', content: 'a' }]);
  for (const inPlace of [true, false]) {
    const image = memoryImage([tar], { inPlace, diffIds: [sha256('something else')] });
    t.teardown(() => image.dispose());
    const chunks: Buffer[] = [];
    const err = await t.throwsAsync(async () => {
      for await (const chunk of flattenImage(image)) chunks.push(chunk as Buffer);
    });
    t.true(err instanceof DigestMismatchError, String(err));
    t.regex(err!.message, inPlace ? /layer 1\/1 .*does not match its diff_id/ : /does not match its digest/);
    // Nothing, or entries without the end-of-archive blocks: never a complete tar.
    const out = Buffer.concat(chunks);
    t.false(out.length >= 1024 && out.subarray(-1024).equals(Buffer.alloc(1024)));
  }
});

/** A slow sink that keeps copies of what it is given (a buffer reused too early would show as corrupt output). */
function slowSink(failAfter = Number.POSITIVE_INFINITY): Writable & { bytes(): Buffer } {
  const copies: Buffer[] = [];
  let seen = 0;
  const sink = new Writable({
    highWaterMark: 1,
    write(chunk: Buffer, _encoding, callback) {
      seen += chunk.length;
      if (seen > failAfter) return callback(new Error('disk full'));
      const copy = Buffer.from(chunk);
      setTimeout(() => {
        copies.push(copy);
        callback();
      }, 1);
    },
  });
  return Object.assign(sink, { bytes: () => Buffer.concat(copies) });
}

test('writeFlattened writes the same bytes as the stream, reusing its buffers only once the output is done with them', async (t) => {
  const huge = { 'user.huge': Buffer.alloc(1_500_000, 0x61) }; // a PAX header bigger than an output chunk
  const layers = await Promise.all([...MIXED, [{ path: 'xattrs', content: 'x', xattrs: huge }]].map((entries) => layerTar(entries)));
  const image = memoryImage(layers, { inPlace: true });
  t.teardown(() => image.dispose());
  const expected = await collect(flattenImage(image));
  const sink = slowSink();
  t.is(await writeFlattened(image, sink), expected.length);
  t.is(sink.bytes().length, expected.length);
  t.true(sink.bytes().equals(expected));
  const [xattrs] = (await entriesOf(expected)).filter(([entry]) => entry.path === 'xattrs');
  t.deepEqual(xattrs, file('xattrs', 'x', { xattrs: huge }));
  const failing = slowSink(2 << 20);
  failing.on('error', () => {});
  await t.throwsAsync(writeFlattened(image, failing), { message: 'disk full' });
});
