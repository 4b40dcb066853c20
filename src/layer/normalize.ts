// Writing a layer reproducibly (DESIGN.md "Layers are reproducible"): entries sorted by name with parents
// before children (component by component, so a directory's children follow it directly) and a
// directory's opaque marker before its siblings; mtimes clamped; numeric owners; hard links kept, always
// pointing at an earlier entry. Bodies stay where they are in local files (layer-tar.ts copies them by
// offset), so only metadata is in memory.
import { TarFormatError } from '../errors.js';
import { comparePaths } from './path-order.js';
import { printable, type TarEntry } from './tar.js';

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
