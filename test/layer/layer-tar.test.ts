// The layer tar written on a worker (src/layer/layer-tar.ts) against TarWriter, the stream it replaced:
// the same bytes for the same entries, whatever their bodies are made of, across the worker's buffer and
// batch boundaries; a body its file cannot give, and an output that cannot be written, are errors.
import test from 'ava';
import { createWriteStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { TarFormatError } from '../../src/errors.js';
import { sha256 } from '../../src/image/digest.js';
import { writeLayerTar } from '../../src/layer/layer-tar.js';
import type { BodyPiece, LayerEntry } from '../../src/layer/normalize.js';
import { TarWriter } from '../../src/layer/tar.js';

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-layer-tar-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A body's bytes, piece by piece, as the layer must hold them. */
function bodyBytes(item: LayerEntry): Buffer | undefined {
  const { entry, body } = item;
  if (entry.type !== 'file' || entry.size === 0 || !body) return entry.type === 'file' ? Buffer.alloc(0) : undefined;
  const pieces: readonly BodyPiece[] = 'pieces' in body ? body.pieces : [{ file: body.file, offset: body.offset, length: entry.size }];
  return Buffer.concat(pieces.map((piece) => ('zeros' in piece ? Buffer.alloc(piece.zeros) : readFileSync(piece.file).subarray(piece.offset, piece.offset + piece.length))));
}

/** The same entries through TarWriter. */
async function throughTarWriter(entries: readonly LayerEntry[], output: string): Promise<void> {
  const writer = new TarWriter();
  const writing = pipeline(writer.stream, createWriteStream(output));
  for (const item of entries) await writer.add(item.entry, bodyBytes(item));
  writer.finish();
  await writing;
}

/** Deterministic bytes that are not all alike. */
function pattern(size: number, seed: number): Buffer {
  const data = Buffer.alloc(size);
  for (let i = 0; i < size; i++) data[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return data;
}

const total = (pieces: readonly BodyPiece[]) => pieces.reduce((sum, piece) => sum + ('zeros' in piece ? piece.zeros : piece.length), 0);
const base = { mode: 0o644, uid: 0, gid: 0, size: 0, mtime: 1_700_000_000 };

test('the bytes TarWriter writes, for bodies at an offset, in pieces with holes, across MiB boundaries, and every kind of header', async (t) => {
  const dir = tempDir(t);
  const disk = join(dir, 'disk.img');
  writeFileSync(disk, pattern(5 * 2 ** 20, 1));
  const mib = 2 ** 20;
  // a hole, a piece ending just short of a MiB, a small one, a hole of 2 MiB, an unaligned tail
  const sparsePieces: BodyPiece[] = [
    { zeros: 5000 },
    { file: disk, offset: 123, length: mib - 1 },
    { file: disk, offset: 2 * mib, length: 77 },
    { zeros: 2 * mib },
    { file: disk, offset: 3 * mib + 1, length: 100_001 },
  ];
  const entries: LayerEntry[] = [
    { entry: { ...base, path: 'd', type: 'directory', mode: 0o755 } },
    { entry: { ...base, path: 'd/one', type: 'file', size: 1 }, body: { file: disk, offset: 7 } },
    { entry: { ...base, path: 'd/block', type: 'file', size: 512 }, body: { file: disk, offset: 4096 } },
    { entry: { ...base, path: 'd/empty', type: 'file' } },
    { entry: { ...base, path: 'd/mib-and-3', type: 'file', size: mib + 3 }, body: { file: disk, offset: 1000 } },
    { entry: { ...base, path: 'd/sparse', type: 'file', size: total(sparsePieces) }, body: { pieces: sparsePieces } },
    { entry: { ...base, path: 'd/hard', type: 'link', linkname: 'd/one' } },
    { entry: { ...base, path: `d/${'long-name-'.repeat(30)}`, type: 'file', size: 3, uid: 3_000_000, gid: 3_000_001, xattrs: { 'security.capability': Buffer.from([1, 0, 0, 2]), 'user.a%3Db': Buffer.from('v') } }, body: { file: disk, offset: 9 } },
    { entry: { ...base, path: 'd/link', type: 'symlink', linkname: 't'.repeat(150) } },
    { entry: { ...base, path: 'd/null', type: 'character-device', devmajor: 1, devminor: 3 } },
    { entry: { ...base, path: 'd/fifo', type: 'fifo', mode: 0o600 } },
  ];
  const [ours, theirs] = [join(dir, 'ours.tar'), join(dir, 'theirs.tar')];
  const written = await writeLayerTar(entries, ours);
  await throughTarWriter(entries, theirs);
  const bytes = readFileSync(ours);
  t.true(bytes.equals(readFileSync(theirs)), 'the same bytes as TarWriter');
  t.is(written.size, bytes.length);
  t.is(written.digest, sha256(bytes), 'the digest is of the bytes written');
});

test('a layer of many small files, over many batches: the same bytes as TarWriter', async (t) => {
  const dir = tempDir(t);
  const disk = join(dir, 'disk.img');
  writeFileSync(disk, pattern(64 * 1024, 2));
  const entries: LayerEntry[] = [{ entry: { ...base, path: 'many', type: 'directory', mode: 0o755 } }];
  for (let i = 0; i < 9000; i++) {
    const size = (i * 37) % 1500;
    entries.push(size === 0 ? { entry: { ...base, path: `many/f${String(i).padStart(5, '0')}`, type: 'file' } } : { entry: { ...base, path: `many/f${String(i).padStart(5, '0')}`, type: 'file', size }, body: { file: disk, offset: (i * 101) % 60_000 } });
  }
  const [ours, theirs] = [join(dir, 'ours.tar'), join(dir, 'theirs.tar')];
  const written = await writeLayerTar(entries, ours);
  await throughTarWriter(entries, theirs);
  t.true(readFileSync(ours).equals(readFileSync(theirs)));
  t.is(written.digest, sha256(readFileSync(theirs)));
});

test('a body its file cannot give is an error naming the entry; an output that cannot be written keeps its code', async (t) => {
  const dir = tempDir(t);
  const disk = join(dir, 'disk.img');
  writeFileSync(disk, Buffer.alloc(1000, 1));
  const short: LayerEntry[] = [{ entry: { ...base, path: 'short', type: 'file', size: 2000 }, body: { file: disk, offset: 0 } }];
  const error = await t.throwsAsync(writeLayerTar(short, join(dir, 'out.tar')), { instanceOf: TarFormatError });
  t.is(error?.message, `"short": content cut short in ${disk}`);
  const missing = await t.throwsAsync(writeLayerTar([], join(dir, 'no-such-dir', 'out.tar')));
  t.is((missing as NodeJS.ErrnoException | undefined)?.code, 'ENOENT');
  await t.throwsAsync(writeLayerTar([{ entry: { ...base, path: 'wrong', type: 'file', size: 10 }, body: { pieces: [{ zeros: 9 }] } }], join(dir, 'out2.tar')), {
    instanceOf: TarFormatError,
    message: /^"wrong": its content's pieces do not add up to its size$/,
  });
});
