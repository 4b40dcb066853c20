// The native export (nixpkgs exportImage without a VM): an image's merged filesystem as one
// uncompressed tar, computed from the layer tars alone. Two passes keep memory flat whatever the
// image's size: pass 1 reads each layer's headers top-down and keeps only which entry wins each path
// (merge.ts); pass 2 writes the winners in sorted order, copying bodies by position (emit.ts).
// Layers stored uncompressed are read in place (Layer.localTar, verified on a worker thread); others
// are spooled uncompressed to a temp directory first, verified by the stream that produced them, and
// removed at the end, also on error.
import { createWriteStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { dir as tempDir, setGracefulCleanup, type DirectoryResult } from 'tmp-promise';
import type { Image } from '../image/image.js';
import { CHUNK_SIZE, END_OF_ARCHIVE, emitEntries } from './emit.js';
import { MergeIndex } from './merge.js';
import { comparePaths } from '../layer/path-order.js';
import { RangeReader } from '../layer/range-reader.js';
import { scanTar } from '../layer/tar-scan.js';
import { verifyLocalTars, type LocalTarToCheck, type Verification } from '../layer/verify-in-place.js';

export interface FlattenOptions {
  /** names the image in errors (default: its first repo tag, else its config digest) */
  readonly source?: string;
  /** clamp every mtime to at most this many seconds since the epoch (--mtime, SOURCE_DATE_EPOCH); default: keep them */
  readonly mtime?: number;
  /** where layers that are not stored uncompressed are spooled (default: the OS temp directory) */
  readonly tmpdir?: string;
  /** called once pass 1 is done, before the first byte is produced */
  readonly onIndexed?: (stats: FlattenStats) => void;
}

export interface FlattenStats {
  /** entries the output tar will hold */
  entries: number;
  layers: number;
  /** layers read in place (the rest were spooled) */
  inPlace: number;
}

// Spooled layers also go when the process exits early (the CLI turns Ctrl-C into an orderly exit).
setGracefulCleanup();

interface LayerTar {
  path: string;
  offset: number;
  size: number;
}

/**
 * The merged filesystem of `image` as a tar stream: entries sorted by path (parents first), whiteouts
 * applied and gone, hard links pointing at earlier entries. Nothing is produced until every layer has
 * been indexed, so bad input (see merge.ts) fails before the first byte; a layer whose bytes do not
 * match its diff_id fails the stream before the end-of-archive blocks.
 */
export function flattenImage(image: Image, options: FlattenOptions = {}): Readable {
  return Readable.from(flattenChunks(image, options), { objectMode: false, highWaterMark: CHUNK_SIZE });
}

async function* flattenChunks(image: Image, options: FlattenOptions): AsyncGenerator<Buffer> {
  const flat = await prepare(image, options);
  try {
    yield* flat.chunks();
    await flat.verified();
    yield END_OF_ARCHIVE;
  } finally {
    await flat.release();
  }
}

/**
 * The same tar as flattenImage, written to `output` (not ended: the caller ends or closes it). Faster
 * and leaner than piping the stream: a few 1 MiB buffers are reused, each once `output` has taken its
 * bytes, so no garbage piles up however large the image. Resolves to the number of bytes written,
 * once `output` has taken them all.
 */
export async function writeFlattened(image: Image, output: Writable, options: FlattenOptions = {}): Promise<number> {
  const free: Buffer[] = [];
  const owned = new Map<ArrayBufferLike, Buffer>();
  for (let i = 0; i < BUFFERS; i++) {
    const buffer = Buffer.allocUnsafeSlow(CHUNK_SIZE);
    free.push(buffer);
    owned.set(buffer.buffer, buffer);
  }
  let failed: Error | undefined;
  let wake: (() => void) | undefined;
  let pending = 0;
  const write = (chunk: Buffer) => {
    pending++;
    output.write(chunk, (err) => {
      pending--;
      if (err) failed ??= err;
      const buffer = owned.get(chunk.buffer);
      if (buffer && chunk.byteOffset === 0) free.push(buffer);
      wake?.();
    });
  };
  const onError = (err: Error) => {
    failed ??= err;
    wake?.();
  };
  output.on('error', onError);
  const flat = await prepare(image, options);
  let bytes = 0;
  try {
    const chunks = flat.chunks(() => free.pop()!);
    for (;;) {
      // The generator takes a fresh buffer as soon as it resumes: have one ready.
      while (free.length === 0 && !failed) await new Promise<void>((resolve) => (wake = resolve));
      if (failed) throw failed;
      const next = chunks.next();
      if (next.done) break;
      bytes += next.value.length;
      write(next.value);
    }
    await flat.verified();
    write(END_OF_ARCHIVE);
    bytes += END_OF_ARCHIVE.length;
    while (pending > 0 && !failed) await new Promise<void>((resolve) => (wake = resolve));
    if (failed) throw failed;
    return bytes;
  } finally {
    output.off('error', onError);
    await flat.release();
  }
}

/** buffers writeFlattened keeps in flight: enough to overlap reading layers with the output's writes */
const BUFFERS = 4;

interface Prepared {
  /** the entries as tar bytes, without the end-of-archive blocks */
  chunks(allocate?: () => Buffer): Generator<Buffer>;
  /** resolves once every layer read in place matched its diff_id */
  verified(): Promise<void>;
  /** close files, stop verifying, remove spooled layers */
  release(): Promise<void>;
}

/** Pass 1: locate (or spool) every layer tar and index them top-down. */
async function prepare(image: Image, options: FlattenOptions): Promise<Prepared> {
  const name = options.source ?? image.repoTags[0] ?? image.configDigest;
  const count = image.layers.length;
  const describe = (i: number) => `${name}: layer ${i + 1}/${count} (${image.layers[i]!.diffId})`;
  let spool: DirectoryResult | undefined;
  const readers: RangeReader[] = [];
  let verification: Verification | undefined;
  const release = async () => {
    await verification?.cancel();
    for (const reader of readers.splice(0)) reader.close();
    await spool?.cleanup();
    spool = undefined;
  };
  try {
    const tars: LayerTar[] = [];
    const toCheck: LocalTarToCheck[] = [];
    for (const [i, layer] of image.layers.entries()) {
      const local = await layer.localTar?.();
      if (local) {
        tars.push(local);
        toCheck.push({ ...local, diffId: layer.diffId, what: describe(i) });
        continue;
      }
      spool ??= await tempDir({ prefix: 'dockvm-export-', unsafeCleanup: true, ...(options.tmpdir ? { tmpdir: options.tmpdir } : {}) });
      const path = join(spool.path, `layer-${i}.tar`);
      await pipeline(await layer.openTar(), createWriteStream(path));
      tars.push({ path, offset: 0, size: (await stat(path)).size });
    }
    verification = verifyLocalTars(toCheck);
    for (const tar of tars) readers.push(new RangeReader(tar.path));

    const index = new MergeIndex(describe);
    for (let i = count - 1; i >= 0; i--) {
      const tar = tars[i]!;
      index.addLayer(i, scanTar(readers[i]!, tar.offset, tar.size, describe(i)));
    }
    const winners = index.winners.sort((a, b) => comparePaths(a.path, b.path));
    options.onIndexed?.({ entries: winners.length, layers: count, inPlace: toCheck.length });
    const checked = verification;
    return {
      chunks: (allocate) => emitEntries(winners, (i) => readers[i]!, { mtime: options.mtime, describe, ...(allocate ? { allocate } : {}) }),
      verified: () => checked.done,
      release,
    };
  } catch (err) {
    await release();
    throw err;
  }
}
