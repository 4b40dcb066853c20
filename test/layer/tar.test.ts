import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { TarWriter, readTar, type TarEntry } from '../../src/layer/tar.js';
import { TarFormatError, UnsafeTarEntryError } from '../../src/errors.js';
import { collect, oddChunks } from '../helpers/streams.js';
import { needs } from '../helpers/prerequisites.js';
import { writeTar } from '../helpers/tar.js';

// A capability blob as setcap writes it: binary, with bytes >= 0x80 and NULs.
const CAP = Buffer.from('0100000200200000000000000000000000000000', 'hex');
const NON_UTF8 = Buffer.from([0x66, 0xff, 0xfe, 0x6f]).toString('latin1'); // "f\xff\xfeo"
const LONG = `${'d'.repeat(120)}/${'n'.repeat(200)}`;

const entries: [TarEntry, Buffer?][] = [
  [{ path: 'bin', type: 'directory', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 1 }],
  [{ path: 'bin/ping', type: 'file', mode: 0o4755, uid: 0, gid: 0, size: 4, mtime: 1, xattrs: { 'security.capability': CAP } }, Buffer.from('ping')],
  [{ path: 'bin/pong', type: 'link', mode: 0o4755, uid: 0, gid: 0, size: 0, mtime: 1, linkname: 'bin/ping' }],
  [{ path: NON_UTF8, type: 'file', mode: 0o600, uid: 1000, gid: 100, size: 0, mtime: 2 }],
  [{ path: 'line\nbreak', type: 'file', mode: 0o644, uid: 0, gid: 0, size: 1, mtime: 3 }, Buffer.from('x')],
  [{ path: LONG, type: 'symlink', mode: 0o777, uid: 0, gid: 0, size: 0, mtime: 4, linkname: `/${'t'.repeat(150)}` }],
  [{ path: 'dev/null', type: 'character-device', mode: 0o666, uid: 0, gid: 0, size: 0, mtime: 5, devmajor: 1, devminor: 3 }],
  [{ path: 'big-uid', type: 'fifo', mode: 0o644, uid: 3_000_000, gid: 3_000_001, size: 0, mtime: 6 }],
];

test('entries round-trip byte for byte, read in odd-sized chunks', async (t) => {
  const tar = await writeTar(entries);
  const seen: [TarEntry, Buffer][] = [];
  for await (const { entry, body } of readTar(oddChunks(tar), { source: 'test.tar' })) seen.push([entry, await collect(body)]);
  t.is(seen.length, entries.length);
  for (const [i, [entry, body]] of entries.entries()) {
    const [got, content] = seen[i]!;
    t.deepEqual(got, entry, `entry ${i}`);
    t.deepEqual(content, body ?? Buffer.alloc(0));
  }
});

test('dataOffset points at each entry\'s content in the tar', async (t) => {
  const tar = await writeTar(entries);
  for await (const { entry, dataOffset, body } of readTar(oddChunks(tar), { source: 'test.tar' })) {
    t.deepEqual(tar.subarray(dataOffset, dataOffset + entry.size), await collect(body), entry.path);
  }
});

test('bodies left unread are drained, however large', async (t) => {
  const big = Buffer.alloc(5 << 20, 7);
  const tar = await writeTar([
    [{ path: 'big', type: 'file', mode: 0o644, uid: 0, gid: 0, size: big.length, mtime: 0 }, big],
    [{ path: 'after', type: 'file', mode: 0o644, uid: 0, gid: 0, size: 1, mtime: 0 }, Buffer.from('a')],
  ]);
  const paths: string[] = [];
  for await (const { entry } of readTar(oddChunks(tar, [65536, 4097]), { source: 'big.tar' })) paths.push(entry.path);
  t.deepEqual(paths, ['big', 'after']);
});

test('the same entries give the same bytes', async (t) => {
  t.deepEqual(await writeTar(entries), await writeTar(entries));
});

test('GNU tar reads what we write: names, modes, owners, xattrs', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-tar-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return writeTar(entries).then((tar) => {
    writeFileSync(join(dir, 'a.tar'), tar);
    const listing = execFileSync('tar', ['--numeric-owner', '--quoting-style=literal', '-tvf', join(dir, 'a.tar')], { encoding: 'latin1' });
    t.regex(listing, /-rwsr-xr-x 0\/0 +4 .* bin\/ping/);
    t.regex(listing, /hrwsr-xr-x .* bin\/pong link to bin\/ping/);
    t.regex(listing, /prw-r--r-- 3000000\/3000001/);
    t.true(listing.includes(`${'n'.repeat(200)} -> /${'t'.repeat(150)}`));
    t.true(listing.includes(NON_UTF8));
    const xattrs = execFileSync('tar', ['--xattrs', '--xattrs-include=*', '-tvvf', join(dir, 'a.tar'), 'bin/ping'], { encoding: 'latin1' });
    t.regex(xattrs, new RegExp(`x: ${CAP.length} security\\.capability`));
  });
});

// Setting security.capability on extraction takes CAP_SETFCAP: root, as CI runs the suite.
needs(process.getuid?.() === 0, 'extracting security.capability needs root')('GNU tar extracts the xattr\'s value byte for byte; getcap reads it as setcap wrote it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-tar-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'a.tar'), await writeTar(entries));
  execFileSync('tar', ['--xattrs', '--xattrs-include=*', '-xf', join(dir, 'a.tar'), '-C', dir, 'bin/ping']);
  const value = execFileSync('getfattr', ['--absolute-names', '--only-values', '-n', 'security.capability', join(dir, 'bin/ping')]);
  t.deepEqual(value, CAP);
  t.is(execFileSync('getcap', [join(dir, 'bin/ping')], { encoding: 'utf8' }).trim(), `${join(dir, 'bin/ping')} cap_net_raw=ep`);
});

test('absolute paths and ".." are refused, naming the entry', async (t) => {
  for (const path of ['/etc/passwd', 'a/../../etc/passwd']) {
    const tar = await writeTar([[{ path, type: 'file', mode: 0o644, uid: 0, gid: 0, size: 0, mtime: 0 }]]);
    const err = await t.throwsAsync(async () => {
      for await (const _ of readTar(Readable.from([tar]), { source: 'evil.tar' })) void _;
    });
    t.true(err instanceof UnsafeTarEntryError);
    t.true(err!.message.includes('evil.tar') && err!.message.includes(JSON.stringify(path)), err!.message);
  }
});

test('a truncated tar is a TarFormatError naming the archive', async (t) => {
  const tar = await writeTar(entries);
  const err = await t.throwsAsync(async () => {
    for await (const { body } of readTar(Readable.from([tar.subarray(0, 1100)]), { source: 'cut.tar' })) await collect(body);
  });
  t.true(err instanceof TarFormatError, String(err));
  t.regex(err!.message, /cut\.tar/);
});

test('a body that fails mid-way fails add() and the archive stream, and nothing else', async (t) => {
  const writer = new TarWriter();
  const streamError = new Promise<Error>((resolve) => writer.stream.on('error', resolve));
  writer.stream.resume();
  const body = new Readable({ read() {} });
  body.push(Buffer.alloc(100));
  setTimeout(() => body.destroy(new Error('digest mismatch')), 10);
  await t.throwsAsync(writer.add({ path: 'a', type: 'file', mode: 0o644, uid: 0, gid: 0, size: 1000, mtime: 0 }, body), { message: 'digest mismatch' });
  t.is((await streamError).message, 'digest mismatch');
});
