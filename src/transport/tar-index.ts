// An index of a tar file's entries (name → offset and size of the content), so that an image archive is
// read in place, by ranges, and never extracted. The entries are parsed once by readTar (which checks
// checksums, PAX records and paths); offsets are then found by walking the header blocks, which readTar
// does not report.
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { ImageFormatError, TarFormatError } from '../errors.js';
import { readTar, printable, type EntryType } from '../layer/tar.js';

export interface IndexedEntry {
  path: string;
  type: EntryType;
  /** where the content starts in the file */
  offset: number;
  size: number;
  linkname?: string;
}

const BLOCK = 512;
// Header types that describe the next header rather than being entries themselves: PAX (x, g), GNU long names (L, K).
const META_TYPES = new Set(['x', 'g', 'L', 'K']);

/** Index the tar at `path`; `source` names it in errors. Later entries of the same name win, as in tar. */
export async function indexTar(path: string, source: string): Promise<Map<string, IndexedEntry>> {
  const parsed: { path: string; type: EntryType; size: number; linkname?: string }[] = [];
  for await (const { entry, body } of readTar(createReadStream(path), { source })) {
    body.resume(); // skip the content at once rather than leave it to tar-stream's own draining
    parsed.push({ path: entry.path, type: entry.type, size: entry.size, ...(entry.linkname !== undefined ? { linkname: entry.linkname } : {}) });
  }
  const handle = await open(path, 'r');
  try {
    const fileSize = (await handle.stat()).size;
    const header = Buffer.alloc(BLOCK);
    const index = new Map<string, IndexedEntry>();
    let position = 0;
    for (const entry of parsed) {
      for (;;) {
        const { bytesRead } = await handle.read(header, 0, BLOCK, position);
        if (bytesRead < BLOCK) throw walkError(source, entry.path);
        const typeflag = String.fromCharCode(header[156]!);
        const size = headerSize(header);
        if (size === undefined) throw walkError(source, entry.path);
        if (!META_TYPES.has(typeflag)) {
          // A PAX size overrides the header's; readTar reports it for regular files.
          const contentSize = entry.type === 'file' ? entry.size : size;
          const offset = position + BLOCK;
          if (offset + contentSize > fileSize) throw walkError(source, entry.path);
          index.set(entry.path, { ...entry, offset, size: entry.type === 'file' ? contentSize : 0 });
          position = offset + roundUp(contentSize);
          break;
        }
        position += BLOCK + roundUp(size);
      }
    }
    return index;
  } finally {
    await handle.close();
  }
}

function roundUp(size: number): number {
  return Math.ceil(size / BLOCK) * BLOCK;
}

/** The size field: octal, or base-256 when the high bit of its first byte is set (GNU). */
function headerSize(header: Buffer): number | undefined {
  const field = header.subarray(124, 136);
  if (field[0]! & 0x80) {
    let value = 0;
    for (let i = 1; i < field.length; i++) value = value * 256 + field[i]!;
    return Number.isSafeInteger(value) ? value : undefined;
  }
  const text = field.toString('latin1').replace(/[\0 ]+$/, '').replace(/^[\0 ]+/, '');
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) return undefined;
  return Number.parseInt(text, 8);
}

function walkError(source: string, entry: string): TarFormatError {
  return new TarFormatError(`${source}: cannot locate the content of entry ${printable(entry)} (truncated or corrupt tar?)`, {
    source,
    entry,
  });
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
