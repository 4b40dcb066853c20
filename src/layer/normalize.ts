// Writing a layer reproducibly (DESIGN.md "Layers are reproducible"): entries sorted by name with parents
// before children (component by component, so a directory's children follow it directly) and a
// directory's opaque marker before its siblings; mtimes clamped; numeric owners; hard links kept, always
// pointing at an earlier entry. Bodies are copied by offset from local files, so only metadata is in memory.
import { createReadStream } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { TarFormatError } from '../errors.js';
import { comparePaths } from './path-order.js';
import { printable, type TarEntry, type TarWriter } from './tar.js';

export interface BodyLocation {
  /** a local file holding the entry's `size` bytes at `offset` */
  file: string;
  offset: number;
}

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

/** Write sorted entries (from normalizeEntries) into `writer`, copying bodies from their files. */
export async function writeEntries(entries: readonly LayerEntry[], writer: TarWriter): Promise<void> {
  const handles = new Map<string, FileHandle>();
  try {
    for (const { entry, body } of entries) {
      if (entry.type !== 'file' || entry.size === 0) {
        await writer.add(entry);
        continue;
      }
      if (!body) throw new TarFormatError(`no content for ${printable(entry.path)}`, { entry: entry.path });
      let handle = handles.get(body.file);
      if (!handle) {
        handle = await open(body.file, 'r');
        handles.set(body.file, handle);
      }
      if (entry.size <= SMALL_BODY) {
        const buffer = Buffer.allocUnsafe(entry.size);
        const { bytesRead } = await handle.read(buffer, 0, entry.size, body.offset);
        if (bytesRead !== entry.size) throw new TarFormatError(`${printable(entry.path)}: content cut short in ${body.file}`, { entry: entry.path });
        await writer.add(entry, buffer);
      } else {
        // a stream of its own per large body (streams on one shared FileHandle pile up listeners on it)
        await writer.add(entry, createReadStream(body.file, { start: body.offset, end: body.offset + entry.size - 1 }));
      }
    }
  } finally {
    await Promise.all([...handles.values()].map((handle) => handle.close()));
  }
}
