import test from 'ava';
import fc from 'fast-check';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, linkSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { RangeReader } from '../../src/layer/range-reader.js';
import { normalize, scanTar, type ScannedEntry } from '../../src/layer/tar-scan.js';
import { normalizePath, readTar, type EntryType, type TarEntry } from '../../src/layer/tar.js';
import { TarFormatError, UnsafeTarEntryError } from '../../src/errors.js';
import { collect } from '../helpers/streams.js';
import { writeTar } from '../helpers/tar.js';

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-scan-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** What readTar says about a tar: entries (without uname/gname, which the scanner drops) and where bodies start. */
async function viaReadTar(tar: Buffer): Promise<ScannedEntry[]> {
  const out: ScannedEntry[] = [];
  for await (const { entry, dataOffset, body } of readTar(Readable.from([tar]), { source: 'x.tar' })) {
    await collect(body);
    const { uname: _u, gname: _g, ...rest } = entry;
    out.push({ entry: rest, bodyOffset: dataOffset });
  }
  return out;
}

/** The scanner over the same bytes, placed at an offset inside a bigger file as an archive would hold it. */
function viaScan(dir: string, tar: Buffer, lead = 1536): ScannedEntry[] {
  const path = join(dir, `scan-${Math.random().toString(36).slice(2)}.bin`);
  writeFileSync(path, Buffer.concat([Buffer.alloc(lead, 0xaa), tar, Buffer.alloc(777, 0xbb)]));
  const reader = new RangeReader(path);
  try {
    return [...scanTar(reader, lead, tar.length, 'x.tar')].map(({ entry, bodyOffset }) => ({ entry, bodyOffset: bodyOffset - lead }));
  } finally {
    reader.close();
  }
}

test('GNU tar archives (gnu and posix formats) scan as readTar reads them, bodies located', async (t) => {
  const dir = tempDir(t);
  const root = join(dir, 'root');
  const long = `${'d'.repeat(120)}/${'e'.repeat(90)}/${'n'.repeat(200)}`;
  mkdirSync(join(root, long.slice(0, long.lastIndexOf('/'))), { recursive: true });
  writeFileSync(join(root, long), 'long name');
  writeFileSync(join(root, 'big'), Buffer.alloc(70_000, 3));
  linkSync(join(root, 'big'), join(root, 'hard'));
  symlinkSync(`/${'t'.repeat(150)}`, join(root, 'sym'));
  writeFileSync(join(root, Buffer.from([0x66, 0xff, 0x6f]).toString('latin1')), 'x');
  execFileSync('mkfifo', [join(root, 'fifo')]);
  execFileSync('setfattr', ['-n', 'user.note', '-v', '0x00ff10', join(root, 'big')]);
  for (const format of ['gnu', 'posix']) {
    const archive = join(dir, `${format}.tar`);
    execFileSync('tar', [`--format=${format}`, '--xattrs', '--xattrs-include=user.*', '-cf', archive, '-C', root, '.']);
    const tar = readFileSync(archive);
    const expected = await viaReadTar(tar);
    t.true(expected.length >= 9, format);
    t.deepEqual(viaScan(dir, tar), expected, format);
    // `big` and `hard` are one inode: whichever tar met first carries the content.
    const content = expected.filter(({ entry }) => ['big', 'hard'].includes(entry.path) && entry.type === 'file');
    t.is(content.length, 1, format);
    const { entry, bodyOffset } = content[0]!;
    t.true(tar.subarray(bodyOffset, bodyOffset + entry.size).equals(Buffer.alloc(70_000, 3)), format);
  }
});

const entryArb: fc.Arbitrary<[TarEntry, Buffer?]> = fc
  .record({
    name: fc.array(fc.stringMatching(/^[a-zA-Z0-9._-]{1,40}$/).filter((s) => s !== '.' && s !== '..'), { minLength: 1, maxLength: 8 }),
    type: fc.constantFrom<EntryType>('file', 'directory', 'symlink', 'fifo', 'character-device'),
    mode: fc.integer({ min: 0, max: 0o7777 }),
    uid: fc.oneof(fc.integer({ min: 0, max: 65535 }), fc.integer({ min: 0o7777777 + 1, max: 2 ** 31 })),
    size: fc.integer({ min: 0, max: 3000 }),
    mtime: fc.integer({ min: 0, max: 2 ** 33 - 1 }),
    xattr: fc.option(fc.uint8Array({ minLength: 0, maxLength: 40 }), { nil: undefined }),
  })
  .map(({ name, type, mode, uid, size, mtime, xattr }) => {
    const entry: TarEntry = { path: name.join('/'), type, mode, uid, gid: uid, size: type === 'file' ? size : 0, mtime };
    if (type === 'symlink') entry.linkname = `../${name.join('/')}`;
    if (type === 'character-device') Object.assign(entry, { devmajor: 4, devminor: 64 });
    if (xattr) entry.xattrs = { 'security.capability': Buffer.from(xattr) };
    return [entry, type === 'file' ? Buffer.alloc(size, size % 251) : undefined];
  });

test('any tar our writer produces scans exactly as readTar reads it', async (t) => {
  const dir = tempDir(t);
  await fc.assert(
    fc.asyncProperty(fc.array(entryArb, { maxLength: 12 }), async (list) => {
      const tar = await writeTar(list);
      const expected = await viaReadTar(tar);
      t.deepEqual(viaScan(dir, tar), expected);
      return true;
    }),
    { numRuns: 60 },
  );
});

test('truncated, compressed and hostile tars are refused like readTar refuses them', async (t) => {
  const dir = tempDir(t);
  const tar = await writeTar([[{ path: 'a', type: 'file', mode: 0o644, uid: 0, gid: 0, size: 2000, mtime: 0 }, Buffer.alloc(2000, 1)]]);
  const cut = t.throws(() => viaScan(dir, tar.subarray(0, 1536)), { instanceOf: TarFormatError });
  t.regex(cut!.message, /x\.tar: not a valid tar after entry "a": unexpected end of data/);
  const noisy = await writeTar([[{ path: 'r', type: 'file', mode: 0o644, uid: 0, gid: 0, size: 4096, mtime: 0 }, randomBytes(4096)]]);
  const gz = t.throws(() => viaScan(dir, gzipSync(noisy)), { instanceOf: TarFormatError });
  t.regex(gz!.message, /invalid tar header \(is it compressed\?\)/);
  const evil = await writeTar([[{ path: '../../etc/passwd', type: 'file', mode: 0o644, uid: 0, gid: 0, size: 0, mtime: 0 }]]);
  const unsafe = t.throws(() => viaScan(dir, evil), { instanceOf: UnsafeTarEntryError });
  t.regex(unsafe!.message, /"\.\.\/\.\.\/etc\/passwd" has a "\.\." component/);
});

test('the scanner\'s path normalisation agrees with normalizePath, refusals included', (t) => {
  const outcome = (fn: () => string) => {
    try {
      return fn();
    } catch (err) {
      return `${(err as Error).name}: ${(err as Error).message}`;
    }
  };
  fc.assert(
    fc.property(fc.stringMatching(/^[a./]{0,12}$/), (raw) => {
      t.is(outcome(() => normalize(raw, 'x.tar')), outcome(() => normalizePath(raw, { source: 'x.tar' })), JSON.stringify(raw));
      return true;
    }),
    { numRuns: 2000 },
  );
});

test('a malformed LIBARCHIVE.xattr name is a corrupt tar for both readers, naming the archive', async (t) => {
  const dir = tempDir(t);
  writeFileSync(join(dir, 'f'), 'hi');
  const archive = join(dir, 'bad-xattr.tar');
  execFileSync('tar', ['--format=posix', '--pax-option=LIBARCHIVE.xattr.x:=eA==', '-cf', archive, '-C', dir, 'f']);
  // The name is URI-encoded: make it a bad escape, same length (the PAX record length stays right).
  const tar = readFileSync(archive);
  const at = tar.indexOf('LIBARCHIVE.xattr.x=');
  t.true(at > 0);
  tar.write('%', at + 'LIBARCHIVE.xattr.'.length, 'latin1');
  const streamed = await t.throwsAsync(viaReadTar(tar), { instanceOf: TarFormatError });
  const scanned = t.throws(() => viaScan(dir, tar), { instanceOf: TarFormatError });
  t.regex(streamed!.message, /^x\.tar: not a valid tar: URI malformed/);
  t.is(scanned!.message, streamed!.message);
});
