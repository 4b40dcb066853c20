// Read a tar's headers without reading its bodies: each entry comes with the file position of its
// content, so a reader can index a tar in one pass and fetch only the bodies it needs. The flattener
// indexes layer tars with it, the archive store an image archive's outer tar.
//
// tar.ts's readTar reads tars as streams and cannot say where an entry's content lies, nor skip it
// without reading it. This scanner decodes the same header forms the same way (tar-stream's ustar/GNU
// decoding, tar.ts's binary-string paths, raw-byte PAX values and path checks; test/layer/tar-scan.test.ts
// holds it to readTar's results), and seeks over bodies instead.
import { DockvmError, TarFormatError } from '../errors.js';
import { applyPax, decodePax, normalizePath, printable, readTar, type EntryType, type TarEntry } from './tar.js';
import type { Layer } from '../image/image.js';
import { RangeReader } from './range-reader.js';

export interface ScannedEntry {
  /** as readTar would give it, without uname/gname (dockvm writes numeric owners only) */
  entry: TarEntry;
  /** file position of the entry's content (its `entry.size` bytes) */
  bodyOffset: number;
}

const BLOCK = 512;
/** tar-stream's limit on a PAX or GNU long-name header: anything bigger is an attack, not a name */
const MAX_LONG_HEADER = 4 * 1024 * 1024;

const TYPES: Record<number, EntryType> = {
  0: 'file',
  1: 'link',
  2: 'symlink',
  3: 'character-device',
  4: 'block-device',
  5: 'directory',
  6: 'fifo',
  7: 'file', // contiguous file
};
const PAX = 72; // 'x'
const PAX_GLOBAL = 55; // 'g'
const GNU_LONG_LINK = 27; // 'K'
const GNU_LONG_PATH = [28, 30]; // 'L', 'N'

/** The entries of the tar at [offset, offset + size) of the reader's file, in order. */
export function* scanTar(reader: RangeReader, offset: number, size: number, source: string): Generator<ScannedEntry> {
  const end = offset + size;
  let pos = offset;
  let last = '';
  let longPath: string | undefined;
  let longLink: string | undefined;
  let pax: Record<string, string> | undefined;
  let paxGlobal: Record<string, string> | undefined;
  const corrupt = (what: string) => {
    const where = last ? ` after entry ${printable(last)}` : '';
    return new TarFormatError(`${source}: not a valid tar${where}: ${what} (truncated or corrupt?)`, { source });
  };
  const fail = (what: string): never => {
    throw corrupt(what);
  };

  while (pos < end) {
    if (end - pos < BLOCK) fail('unexpected end of data');
    const block = reader.peek(pos, BLOCK);
    if (block.length < BLOCK) fail('unexpected end of data');
    pos += BLOCK;
    const sum = checksum(block);
    if (sum === 8 * 32) continue; // an all-zero block: end-of-archive padding
    if (sum !== decodeNumber(block, 148, 8)) fail('invalid tar header (is it compressed?)');
    const flag = block[156] === 0 ? 0 : block[156]! - 48;
    const headerSize = decodeNumber(block, 124, 12);

    if (flag === PAX || flag === PAX_GLOBAL || flag === GNU_LONG_LINK || GNU_LONG_PATH.includes(flag)) {
      if (!(headerSize >= 0) || headerSize > MAX_LONG_HEADER) fail('header exceeds max size');
      if (pos + padded(headerSize) > end) fail('unexpected end of data');
      const body = Buffer.allocUnsafe(headerSize);
      reader.readInto(pos, headerSize, body, 0);
      pos += padded(headerSize);
      if (flag === PAX || flag === PAX_GLOBAL) {
        let records: Record<string, string> = {};
        try {
          records = decodePax(body);
        } catch (err) {
          fail(err instanceof Error ? err.message : String(err));
        }
        if (flag === PAX) pax = { ...(paxGlobal ?? {}), ...records };
        else paxGlobal = records;
      } else {
        const value = cString(body, 0, body.length);
        if (flag === GNU_LONG_LINK) longLink = value;
        else longPath = value;
      }
      continue;
    }

    let name = cString(block, 0, 100);
    let linkname = block[157] === 0 ? '' : cString(block, 157, 100);
    if (isUstar(block)) {
      if (block[345]) name = `${cString(block, 345, 155)}/${name}`;
    } else if (!isGnu(block)) {
      fail('invalid tar header: unknown format');
    }
    let type = TYPES[flag];
    if (flag === 0 && name.endsWith('/')) type = 'directory'; // old tars mark directories with a trailing "/"
    let bodySize = headerSize;
    if (longPath !== undefined) name = longPath;
    if (longLink !== undefined) linkname = longLink;
    const entryPax = pax ?? {};
    if (pax?.path) name = pax.path;
    if (pax?.linkpath) linkname = pax.linkpath;
    if (pax?.size) bodySize = Number.parseInt(pax.size, 10);
    longPath = longLink = pax = undefined;
    if (!(bodySize >= 0)) fail('invalid header');

    const path = normalize(name, source);
    if (!type) {
      throw new TarFormatError(`${source}: entry ${printable(path)} has unsupported tar type ${JSON.stringify(String.fromCharCode(block[156]!))}`, {
        source,
        entry: path,
      });
    }
    let entry: TarEntry;
    try {
      entry = toEntry(block, type, path, linkname, bodySize, entryPax, source);
    } catch (err) {
      // As readTar: our own errors pass, anything else (a malformed LIBARCHIVE.xattr name) is a corrupt tar.
      if (err instanceof DockvmError) throw err;
      throw corrupt(err instanceof Error ? err.message : String(err));
    }
    last = path;
    const bodyOffset = pos;
    // Like tar-stream, a directory's size is never content.
    if (bodySize > 0 && type !== 'directory') pos += padded(bodySize);
    if (pos > end) fail('unexpected end of data');
    yield { entry, bodyOffset };
  }
}

function toEntry(
  block: Buffer,
  type: EntryType,
  path: string,
  linkname: string,
  size: number,
  pax: Record<string, string>,
  source: string,
): TarEntry {
  const entry: TarEntry = {
    path,
    type,
    mode: decodeNumber(block, 100, 8) & 0o7777,
    uid: decodeNumber(block, 108, 8),
    gid: decodeNumber(block, 116, 8),
    size: type === 'file' ? size : 0,
    mtime: decodeNumber(block, 136, 12),
  };
  if (type === 'symlink') entry.linkname = linkname;
  if (type === 'link') entry.linkname = normalize(linkname, source);
  if (type === 'block-device' || type === 'character-device') {
    entry.devmajor = decodeNumber(block, 329, 8);
    entry.devminor = decodeNumber(block, 337, 8);
  }
  applyPax(entry, pax, source);
  return entry;
}

/**
 * tar.ts's normalizePath, without its allocations for the common shapes ("usr/bin/x", "./usr/bin/x",
 * "usr/bin/"): anything else (absolute, "..", "//", "/./") goes to normalizePath itself.
 */
export function normalize(raw: string, source: string): string {
  let path = raw;
  while (path.startsWith('./')) path = path.slice(2);
  if (path.endsWith('/')) path = path.slice(0, -1);
  if (
    path === '' ||
    path === '.' ||
    path === '..' ||
    path.startsWith('/') ||
    path.startsWith('../') ||
    path.endsWith('/') ||
    path.endsWith('/.') ||
    path.endsWith('/..') ||
    path.includes('//') ||
    path.includes('/./') ||
    path.includes('/../')
  ) {
    return normalizePath(raw, { source });
  }
  return path;
}

const padded = (size: number) => size + ((BLOCK - (size % BLOCK)) % BLOCK);

function checksum(block: Buffer): number {
  let sum = 8 * 32;
  for (let i = 0; i < 148; i++) sum += block[i]!;
  for (let i = 156; i < BLOCK; i++) sum += block[i]!;
  return sum;
}

// "ustar\0" (POSIX) or "ustar " + " \0" (GNU), as tar-stream tells them apart.
const USTAR = Buffer.from('ustar\u0000', 'latin1');
const GNU = Buffer.from('ustar  \u0000', 'latin1');
const isUstar = (block: Buffer) => block.compare(USTAR, 0, 6, 257, 263) === 0;
const isGnu = (block: Buffer) => block.compare(GNU, 0, 8, 257, 265) === 0;

/** A NUL-terminated field as a binary string. */
function cString(buf: Buffer, offset: number, length: number): string {
  let end = offset;
  while (end < offset + length && buf[end] !== 0) end++;
  return buf.toString('latin1', offset, end);
}

/** An octal field (leading spaces/NULs allowed, ends at a space or NUL), or GNU base-256 when the top bit is set. */
function decodeNumber(buf: Buffer, offset: number, length: number): number {
  if (buf[offset]! & 0x80) {
    const positive = buf[offset] === 0x80;
    if (!positive && buf[offset] !== 0xff) return Number.NaN;
    let sum = 0;
    for (let i = offset + 1; i < offset + length; i++) sum = sum * 256 + (positive ? buf[i]! : 0xff - buf[i]!);
    return positive ? sum : -sum;
  }
  let at = offset;
  const end = offset + length;
  while (at < end && buf[at] === 0x20) at++;
  let stop = at;
  while (stop < end && buf[stop] !== 0x20) stop++;
  while (at < stop && buf[at] === 0) at++;
  if (at === stop) return 0;
  // parseInt(…, 8) without making a string: octal digits up to the first other byte; none is NaN.
  let value = 0;
  let digits = 0;
  for (; at < stop; at++, digits++) {
    const digit = buf[at]! - 0x30;
    if (digit < 0 || digit > 7) break;
    value = value * 8 + digit;
  }
  return digits === 0 ? Number.NaN : value;
}

/**
 * A layer's entries without their bodies: scanned in place when the layer is an uncompressed tar in a
 * local file (bodies are skipped, not read), else read through its (verified) tar stream. bodyOffset is
 * meaningful only in the first case.
 */
export async function layerHeaders(layer: Layer, what: string): Promise<ScannedEntry[]> {
  const local = await layer.localTar?.();
  if (local) {
    const reader = new RangeReader(local.path);
    try {
      return [...scanTar(reader, local.offset, local.size, what)];
    } finally {
      reader.close();
    }
  }
  const entries: ScannedEntry[] = [];
  for await (const { entry } of readTar(await layer.openTar(), { source: what })) entries.push({ entry, bodyOffset: 0 });
  return entries;
}
