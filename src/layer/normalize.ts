// Writing a layer reproducibly (DESIGN.md "Layers are reproducible"): entries sorted by name with parents
// before children (component by component, so a directory's children follow it directly) and a
// directory's opaque marker before its siblings; mtimes clamped; numeric owners; hard links kept, always
// pointing at an earlier entry. Bodies are copied by offset from local files, so only metadata is in memory.
import { createReadStream } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { TarFormatError } from '../errors.js';
import { comparePaths } from './path-order.js';
import { printable, type TarEntry, type TarWriter } from './tar.js';

/** Where a regular file's content is: `size` bytes at `offset` of a local file, or pieces adding up to `size`. */
export type BodyLocation = { file: string; offset: number } | { pieces: readonly BodyPiece[] };

/** Part of a body: bytes of a local file (an extent on a disk image), or a run of zeros (a hole). */
export type BodyPiece = { file: string; offset: number; length: number } | { zeros: number };

export interface LayerEntry {
  entry: TarEntry;
  /** where a regular file's content is; required when entry.size > 0 */
  body?: BodyLocation;
}

export interface NormalizeOptions {
  /** SOURCE_DATE_EPOCH: no mtime later than this (seconds) */
  clampMtime?: number;
  /** names the layer in errors */
  source: string;
}

/**
 * Sort `entries` and make every hard link point at an earlier entry: within a group of paths sharing
 * content, the first in order carries it and the others link to it.
 */
export function normalizeEntries(entries: readonly LayerEntry[], options: NormalizeOptions): LayerEntry[] {
  const byPath = new Map(entries.map((item) => [item.entry.path, item]));
  const groups = new Map<string, string[]>(); // content holder → paths linked to it
  for (const item of entries) {
    if (item.entry.type !== 'link') continue;
    const holder = linkTarget(item.entry, byPath, options.source);
    const group = groups.get(holder) ?? [];
    group.push(item.entry.path);
    groups.set(holder, group);
  }
  const result = new Map(byPath);
  for (const [holder, links] of groups) {
    const content = byPath.get(holder)!;
    const members = [holder, ...links].sort(comparePaths);
    const first = members[0]!;
    for (const path of members) {
      const entry: TarEntry =
        path === first ? { ...content.entry, path } : { ...content.entry, path, type: 'link', size: 0, linkname: first };
      result.set(path, path === first && content.body ? { entry, body: content.body } : { entry });
    }
  }
  const clamp = options.clampMtime;
  return [...result.values()]
    .map((item) => {
      const { uname: _u, gname: _g, ...entry } = item.entry;
      if (clamp !== undefined && entry.mtime > clamp) entry.mtime = clamp;
      return item.body ? { entry, body: item.body } : { entry };
    })
    .sort((x, y) => comparePaths(x.entry.path, y.entry.path));
}

/** The entry a hard link shares its inode with (following links to links): anything but a directory. */
function linkTarget(entry: TarEntry, byPath: ReadonlyMap<string, LayerEntry>, source: string): string {
  let target = entry.linkname ?? '';
  for (let hops = 0; hops < 64; hops++) {
    const found = byPath.get(target);
    if (!found || found.entry.type === 'directory') break;
    if (found.entry.type !== 'link') return target;
    target = found.entry.linkname ?? '';
  }
  throw new TarFormatError(`${source}: hard link ${printable(entry.path)} points to ${printable(entry.linkname ?? '')}, which the layer does not hold (or is a directory)`, {
    source,
    entry: entry.path,
  });
}

const SMALL_BODY = 1 << 20;
const CHUNK = 1 << 20;

/** Write sorted entries (from normalizeEntries) into `writer`, copying bodies from their files. */
export async function writeEntries(entries: readonly LayerEntry[], writer: TarWriter): Promise<void> {
  const handles = new Map<string, FileHandle>();
  const handleOf = async (file: string): Promise<FileHandle> => {
    let handle = handles.get(file);
    if (!handle) {
      handle = await open(file, 'r');
      handles.set(file, handle);
    }
    return handle;
  };
  try {
    for (const { entry, body } of entries) {
      if (entry.type !== 'file' || entry.size === 0) {
        await writer.add(entry);
        continue;
      }
      if (!body) throw new TarFormatError(`no content for ${printable(entry.path)}`, { entry: entry.path });
      const pieces = 'pieces' in body ? body.pieces : [{ file: body.file, offset: body.offset, length: entry.size }];
      if (pieces.reduce((sum, piece) => sum + ('zeros' in piece ? piece.zeros : piece.length), 0) !== entry.size) {
        throw new TarFormatError(`${printable(entry.path)}: its content's pieces do not add up to its size`, { entry: entry.path });
      }
      if (entry.size <= SMALL_BODY) {
        const buffer = Buffer.alloc(entry.size);
        let at = 0;
        for (const piece of pieces) {
          if ('zeros' in piece) {
            at += piece.zeros;
            continue;
          }
          const { bytesRead } = await (await handleOf(piece.file)).read(buffer, at, piece.length, piece.offset);
          if (bytesRead !== piece.length) throw new TarFormatError(`${printable(entry.path)}: content cut short in ${piece.file}`, { entry: entry.path });
          at += piece.length;
        }
        await writer.add(entry, buffer);
      } else {
        await writer.add(entry, piecesStream(entry, pieces));
      }
    }
  } finally {
    await Promise.all([...handles.values()].map((handle) => handle.close()));
  }
}

/** A large body, piece by piece: a stream of its own per file piece (streams on one shared FileHandle pile up listeners on it). */
function piecesStream(entry: TarEntry, pieces: readonly BodyPiece[]): Readable {
  return Readable.from(
    (async function* () {
      for (const piece of pieces) {
        if ('zeros' in piece) {
          for (let left = piece.zeros; left > 0; left -= CHUNK) yield Buffer.alloc(Math.min(left, CHUNK));
          continue;
        }
        let read = 0;
        for await (const chunk of createReadStream(piece.file, { start: piece.offset, end: piece.offset + piece.length - 1, highWaterMark: CHUNK })) {
          read += (chunk as Buffer).length;
          yield chunk as Buffer;
        }
        if (read !== piece.length) throw new TarFormatError(`${printable(entry.path)}: content cut short in ${piece.file}`, { entry: entry.path });
      }
    })(),
    { objectMode: false },
  );
}
