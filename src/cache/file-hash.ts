// The digest of a selection of host files as a layer would hold them, for a COPY/ADD step's key (and
// run-as-root's copyToRoot): for each entry its path, type, mode, owner (after --chown), size, link target,
// device numbers, xattrs and content — everything that reaches the layer's bytes. Not its mtime as such:
// the layer clamps mtimes to SOURCE_DATE_EPOCH (or `created`), so only min(mtime, clamp) reaches it, and a
// fresh checkout (every mtime later than the clamp) hashes the same as an old one. Nor atime, ctime or
// owner names, which no dockvm layer holds.
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createHash, type Hash } from 'node:crypto';
import type { Digest } from '../image/digest.js';
import { walkDirectory, type WalkedEntry, type WalkOptions } from '../layer/directory.js';
import { canonicalJson } from './canonical-json.js';

export interface SelectionHashOptions {
  /** the layer's mtime clamp (seconds); undefined: mtimes reach the layer as they are (created "now") */
  clampMtime: number | undefined;
}

/**
 * sha256 over `files`, in the order given (the order they would be copied in: a later entry of the same
 * path wins, so order is part of the result). Each is a tar entry as the layer would get it, with the host
 * path of a regular file's content, as walkDirectory yields them.
 */
export async function hashSelection(files: AsyncIterable<WalkedEntry> | Iterable<WalkedEntry>, options: SelectionHashOptions): Promise<Digest> {
  const hash = createHash('sha256');
  // Small files are read a few ahead of the hash (many small files are the common case), hashed in order.
  const window: { walked: WalkedEntry; data: Promise<Buffer> | null }[] = [];
  const hashNext = async () => {
    const { walked, data } = window.shift()!;
    record(hash, describe(walked, options.clampMtime));
    if (data) hash.update(await data);
    else if (walked.file && walked.entry.size > 0) await hashLargeFile(hash, walked.file);
  };
  for await (const walked of files) {
    const small = walked.file !== undefined && walked.entry.type === 'file' && walked.entry.size > 0 && walked.entry.size < SMALL_FILE;
    const data = small ? readFile(walked.file!) : null;
    data?.catch(() => undefined); // awaited in hashNext; this only keeps an early failure from being "unhandled"
    window.push({ walked, data });
    if (window.length >= READ_AHEAD) await hashNext();
  }
  while (window.length > 0) await hashNext();
  return `sha256:${hash.digest('hex')}`;
}

/** hashSelection over everything below `root` (not root itself), walked as copyToRoot and COPY walk it. */
export function hashDirectory(root: string, options: WalkOptions & SelectionHashOptions): Promise<Digest> {
  const { clampMtime, ...walk } = options;
  return hashSelection(walkDirectory(root, walk), { clampMtime });
}

/** sha256 of one file's bytes (a tarball copied in as it is). */
export async function hashFile(path: string): Promise<Digest> {
  const hash = createHash('sha256');
  await hashLargeFile(hash, path);
  return `sha256:${hash.digest('hex')}`;
}

function describe({ entry }: WalkedEntry, clamp: number | undefined): Record<string, unknown> {
  const xattrs = Object.entries(entry.xattrs ?? {})
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([name, value]) => [name, value.toString('base64')]);
  return {
    path: entry.path,
    type: entry.type,
    mode: entry.mode,
    uid: entry.uid,
    gid: entry.gid,
    size: entry.size,
    mtime: clamp !== undefined && entry.mtime > clamp ? clamp : entry.mtime,
    linkname: entry.linkname ?? null,
    devmajor: entry.devmajor ?? null,
    devminor: entry.devminor ?? null,
    xattrs,
  };
}

/** One framed record: its length first, so that no two sequences of records and contents hash alike. */
function record(hash: Hash, value: unknown): void {
  const text = Buffer.from(canonicalJson(value));
  hash.update(`${text.length}:`);
  hash.update(text);
}

/** Files below this are read whole (a stream's buffer per small file costs more than the file); larger ones are streamed. */
const SMALL_FILE = 1024 * 1024;
/** Small files read ahead of the hash. */
const READ_AHEAD = 16;

async function hashLargeFile(hash: Hash, path: string | Buffer): Promise<void> {
  for await (const chunk of createReadStream(path, { highWaterMark: SMALL_FILE })) hash.update(chunk as Buffer);
}
