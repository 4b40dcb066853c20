// Pass 2 of the native export: the merged filesystem's entries, already chosen and sorted, written as
// one tar. Headers come from src/layer/tar.ts's encoder (the same bytes every dockvm tar has); bodies are
// copied from the layer tars by position. Output comes in chunks of about 1 MiB, so a consumer's
// backpressure bounds memory whatever the image's size.
import { TarFormatError } from '../errors.js';
import { OVERLAY_XATTR_PREFIX } from '../layer/overlay.js';
import { encodeHeader, printable, type TarEntry } from '../layer/tar.js';
import type { Inode, Winner } from './merge.js';
import type { RangeReader } from '../layer/range-reader.js';

export const CHUNK_SIZE = 1 << 20;
const CHUNK = CHUNK_SIZE;
const BLOCK = 512;
/** two zero blocks end a tar */
export const END_OF_ARCHIVE = Buffer.alloc(2 * BLOCK);

export interface EmitOptions {
  /** clamp mtimes to at most this (seconds since the epoch) */
  readonly mtime?: number | undefined;
  /** names a layer in errors */
  readonly describe: (layer: number) => string;
  /**
   * Where each next chunk of CHUNK_SIZE bytes comes from (default: a new buffer). A consumer that
   * recycles buffers must be done with a yielded chunk before it asks for the next one.
   */
  readonly allocate?: () => Buffer;
}

/**
 * The tar entries of `winners` (in the order given) without the end-of-archive blocks. Paths that share
 * an inode (hard links) form a group: the first in output order carries the content, the others are
 * hard links to it, so a link always points at an earlier entry; a group of one is a plain entry.
 */
export function* emitEntries(
  winners: readonly Winner[],
  readerFor: (layer: number) => RangeReader,
  options: EmitOptions,
): Generator<Buffer> {
  const groupHeads = new Map<Inode, string>();
  const allocate = options.allocate ?? (() => Buffer.allocUnsafe(CHUNK));
  let chunk = allocate();
  let used = 0;

  for (const { path, inode } of winners) {
    const head = inode.linked ? groupHeads.get(inode) : undefined;
    const entry = outputEntry(path, inode.entry, head, options.mtime);
    if (inode.linked && head === undefined) groupHeads.set(inode, path);

    for (const block of encodeHeader(entry)) {
      if (used > 0 && used + block.length > CHUNK) {
        yield chunk.subarray(0, used);
        chunk = allocate();
        used = 0;
      }
      // A PAX header larger than a chunk (megabytes of xattrs) goes out as it is.
      if (block.length > CHUNK) yield block;
      else used += block.copy(chunk, used);
    }

    // Copy the body in pieces that fill the current chunk, then pad it to a whole block.
    let remaining = entry.type === 'file' ? entry.size : 0;
    let position = inode.bodyOffset;
    const reader = remaining > 0 ? readerFor(inode.layer) : undefined;
    const padding = (BLOCK - (remaining % BLOCK)) % BLOCK;
    while (remaining > 0) {
      if (used === CHUNK) {
        yield chunk;
        chunk = allocate();
        used = 0;
      }
      const n = Math.min(remaining, CHUNK - used);
      const got = reader!.readInto(position, n, chunk, used);
      if (got !== n) {
        throw new TarFormatError(
          `${options.describe(inode.layer)}: the content of entry ${printable(inode.entry.path)} ends early (the layer tar is truncated)`,
          { entry: inode.entry.path },
        );
      }
      used += n;
      position += n;
      remaining -= n;
    }
    if (used + padding > CHUNK) {
      yield chunk.subarray(0, used);
      chunk = allocate();
      used = 0;
    }
    chunk.fill(0, used, used + padding);
    used += padding;
  }
  if (used > 0) yield chunk.subarray(0, used);
}

/**
 * The header to write for `path`: the inode's metadata, or a hard link to the group's first path.
 * What a filesystem cannot hold is shown as a mounted filesystem shows it (and podman exports it): a
 * symlink's mode is 0777 whatever the layer said, and overlayfs' bookkeeping xattrs (trusted.overlay.*)
 * are not there.
 */
function outputEntry(path: string, source: TarEntry, linkTo: string | undefined, clamp: number | undefined): TarEntry {
  const mtime = clamp === undefined ? source.mtime : Math.min(source.mtime, clamp);
  const mode = source.type === 'symlink' ? 0o777 : source.mode;
  const xattrs = source.xattrs && withoutOverlayXattrs(source.xattrs);
  if (linkTo !== undefined) {
    const link: TarEntry = { path, type: 'link', linkname: linkTo, mode, uid: source.uid, gid: source.gid, size: 0, mtime };
    if (xattrs) link.xattrs = xattrs;
    return link;
  }
  const { uname: _uname, gname: _gname, xattrs: _xattrs, ...rest } = source;
  return xattrs ? { ...rest, path, mode, mtime, xattrs } : { ...rest, path, mode, mtime };
}

function withoutOverlayXattrs(xattrs: Record<string, Buffer>): Record<string, Buffer> | undefined {
  const names = Object.keys(xattrs);
  if (!names.some((name) => name.startsWith(OVERLAY_XATTR_PREFIX))) return xattrs;
  const kept = names.filter((name) => !name.startsWith(OVERLAY_XATTR_PREFIX));
  return kept.length > 0 ? Object.fromEntries(kept.map((name) => [name, xattrs[name]!])) : undefined;
}
