// An index of a tar file's entries (name → offset and size of the content), so that an image archive is
// read in place, by ranges, and never extracted. Only headers are read: layer/tar-scan.ts walks them
// and seeks over the bodies, with the checks readTar makes (checksums, PAX records, strict paths, every
// body within the file), so indexing a 1 GB archive reads a few blocks per entry, not the gigabyte.
import { ImageFormatError } from '../errors.js';
import { RangeReader } from '../layer/range-reader.js';
import { printable, type EntryType } from '../layer/tar.js';
import { scanTar } from '../layer/tar-scan.js';
import { describeFailure } from './streams.js';

export interface IndexedEntry {
  path: string;
  type: EntryType;
  /** where the content starts in the file */
  offset: number;
  size: number;
  linkname?: string;
}

/** Index the tar at `path`; `source` names it in errors. Later entries of the same name win, as in tar. */
export async function indexTar(path: string, source: string): Promise<Map<string, IndexedEntry>> {
  let reader: RangeReader;
  try {
    reader = new RangeReader(path);
  } catch (err) {
    throw describeFailure(source)(err);
  }
  try {
    const index = new Map<string, IndexedEntry>();
    for (const { entry, bodyOffset } of scanTar(reader, 0, reader.size, source)) {
      const { path: name, type, size, linkname } = entry;
      index.set(name, { path: name, type, offset: bodyOffset, size, ...(linkname !== undefined ? { linkname } : {}) });
    }
    return index;
  } catch (err) {
    // scanTar's own errors name the archive and entry; a failing read (EIO) is described here.
    throw describeFailure(source)(err);
  } finally {
    reader.close();
  }
}

/**
 * Follow symbolic and hard links inside the archive (newer `docker save` writes `<id>/layer.tar` as a
 * symlink into blobs/sha256/). Returns the regular-file entry `name` leads to, or undefined.
 */
export function resolveEntry(index: Map<string, IndexedEntry>, name: string, source: string): IndexedEntry | undefined {
  let current = normalize(name);
  for (let hops = 0; hops < 16; hops++) {
    const entry = index.get(current);
    if (!entry) return undefined;
    if (entry.type === 'file') return entry;
    if (entry.type === 'link') {
      current = normalize(entry.linkname ?? '');
      continue;
    }
    if (entry.type === 'symlink') {
      const target = entry.linkname ?? '';
      const base = target.startsWith('/') ? '' : current.split('/').slice(0, -1).join('/');
      current = normalize(base === '' ? target : `${base}/${target}`);
      continue;
    }
    throw new ImageFormatError(`${source}: entry ${printable(current)} is a ${entry.type}, not a file`, { source, entry: current });
  }
  throw new ImageFormatError(`${source}: entry ${printable(name)}: too many levels of links`, { source, entry: name });
}

/** "./a/../b//c" → "b/c", confined to the archive (".." at the top stays at the top). */
function normalize(path: string): string {
  const parts: string[] = [];
  for (const part of path.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') parts.pop();
    else parts.push(part);
  }
  return parts.join('/');
}
