// Where an image's files live: a directory (an OCI layout) or a tar file read in place (a docker-archive,
// an oci-archive). Readers ask for files by name; nothing is ever extracted.
import { createReadStream, createWriteStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import type { Readable } from 'node:stream';
import { file as tempFile, setGracefulCleanup } from 'tmp-promise';
import { ImageFormatError, ImageReferenceError } from '../errors.js';
import { printable } from '../layer/tar.js';
import { indexTar, resolveEntry, type IndexedEntry } from './tar-index.js';
import { describeFailure, openRange, readAll, readRange, sniffCompression } from './streams.js';

/** Where a file's bytes lie on the local disk. */
export interface LocalRange {
  path: string;
  offset: number;
  size: number;
  /** hashed against the diff_id as this process wrote it (Layer.localTar) */
  hashed?: boolean;
}

export interface FileStore {
  /** names the archive or directory in messages */
  readonly source: string;
  /** the file's location, or undefined when there is no such file */
  locate(name: string): Promise<LocalRange | undefined>;
  /** every file name (for detecting the format) */
  has(name: string): Promise<boolean>;
  close(): Promise<void>;
}

// A decompressed archive left open when the process exits (an error path that skipped close()) is removed then.
setGracefulCleanup();

/** Largest JSON document (manifest, config, index) read into memory. */
const JSON_LIMIT = 64 * 1024 * 1024;

/** Open a file of the store as a stream; a missing file is an ImageFormatError naming store and file. */
export async function openFile(store: FileStore, name: string, what = `file ${printable(name)}`): Promise<{ stream: Readable; size: number }> {
  const range = await store.locate(name);
  if (!range) throw missing(store, name, what);
  return { stream: openRange(range.path, range.offset, range.size), size: range.size };
}

/** A whole (small) file of the store. */
export async function readFile(store: FileStore, name: string, what?: string): Promise<Buffer> {
  const label = what ?? `file ${printable(name)}`;
  const { stream } = await openFile(store, name, label);
  try {
    return await readAll(stream, JSON_LIMIT, `${store.source}: ${label}`);
  } catch (err) {
    throw describeFailure(`${store.source}: ${label}`)(err);
  }
}

/** Parse a JSON file of the store; bad JSON is an ImageFormatError naming store and file. */
export async function readJsonFile(store: FileStore, name: string, what?: string): Promise<unknown> {
  return parseJson(await readFile(store, name, what), `${store.source}: ${what ?? printable(name)}`);
}

export function parseJson(bytes: Buffer, what: string): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new ImageFormatError(`${what}: not valid JSON (${(err as Error).message})`, { source: what, cause: err });
  }
}

export function missing(store: FileStore, name: string, what: string): ImageFormatError {
  return new ImageFormatError(`${store.source}: ${what} is missing (no entry ${printable(name)} in the ${store instanceof DirStore ? 'directory' : 'archive'})`, {
    source: store.source,
    entry: name,
  });
}

/** An OCI layout directory. */
export class DirStore implements FileStore {
  constructor(readonly dir: string, readonly source: string = dir) {}

  async locate(name: string): Promise<LocalRange | undefined> {
    if (name.split('/').some((part) => part === '..') || name.startsWith('/')) return undefined;
    const path = join(this.dir, name);
    try {
      const info = await stat(path);
      return info.isFile() ? { path, offset: 0, size: info.size } : undefined;
    } catch {
      return undefined;
    }
  }

  async has(name: string): Promise<boolean> {
    return (await this.locate(name)) !== undefined;
  }

  async close(): Promise<void> {}
}

/** A tar file (plain, or gzip-compressed: then decompressed once into a temp file that close() removes). */
export class TarStore implements FileStore {
  private constructor(
    readonly source: string,
    readonly tarPath: string,
    private readonly index: Map<string, IndexedEntry>,
    private readonly cleanup: () => Promise<void>,
  ) {}

  static async open(path: string, source: string = path): Promise<TarStore> {
    const info = await stat(path).catch((err: NodeJS.ErrnoException) => {
      throw new ImageReferenceError(`${source}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`, { source, cause: err });
    });
    if (info.isDirectory()) {
      throw new ImageReferenceError(`${source} is a directory, not an archive; for an OCI layout directory write oci:${path}`, { source });
    }
    const compression = sniffCompression(await readRange(path, 0, 6));
    if (compression === 'none') return TarStore.index(source, path, async () => {});
    if (compression !== 'gzip') {
      throw new ImageFormatError(`${source}: the archive is ${compression}-compressed; dockvm reads plain and gzip archives: decompress it first`, { source });
    }
    const temp = await tempFile({ prefix: 'dockvm-archive-', postfix: '.tar' });
    try {
      // r+: the temp file exists; without O_CREAT a write stream that opens only after a failure has
      // already removed it cannot bring it back as an empty leftover
      await pipeline(createReadStream(path), createGunzip(), createWriteStream(temp.path, { flags: 'r+' }));
    } catch (err) {
      await temp.cleanup();
      throw describeFailure(source)(err);
    }
    return TarStore.index(source, temp.path, () => temp.cleanup());
  }

  private static async index(source: string, tarPath: string, cleanup: () => Promise<void>): Promise<TarStore> {
    try {
      return new TarStore(source, tarPath, await indexTar(tarPath, source), cleanup);
    } catch (err) {
      await cleanup();
      throw err;
    }
  }

  async locate(name: string): Promise<LocalRange | undefined> {
    const entry = resolveEntry(this.index, name, this.source);
    return entry ? { path: this.tarPath, offset: entry.offset, size: entry.size } : undefined;
  }

  async has(name: string): Promise<boolean> {
    return this.index.has(name);
  }

  async close(): Promise<void> {
    await this.cleanup();
  }
}
