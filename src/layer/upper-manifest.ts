// The build VM's description of its overlay upper directory (vm/upper-manifest.c writes it; its header
// comment has the format): every entry's metadata as GNU tar would have archived it, and where each
// regular file's bytes lie on the scratch disk, whose image the host then reads them from. The guest
// packs no bytes through the emulator; the host writes the layer tar (layer-file.ts) as it would from
// the tar GNU tar used to write in the guest, and gets the same bytes.
//
// Untrusted input, like any tar from the guest: paths are checked as tar.ts checks a tar's, every count
// and length is bounded, every extent lies inside the disk image, a body is exactly its file's size
// (extents overlapping each other or reaching past the end are refused or cut off, holes read as zeros).
// An extent may point anywhere in the image: it holds only what mkfs and the guest wrote there, so the
// worst a lying guest gets is a layer of its own disk's bytes. (The caller bounds the total size: a
// sparse file's holes cost nothing on the disk and everything in the layer.)
import { statSync } from 'node:fs';
import { TarFormatError, UnsafeTarEntryError } from '../errors.js';
import type { BodyPiece, LayerEntry } from './normalize.js';
import { RangeReader } from './range-reader.js';
import { normalizePath, printable, type EntryType, type TarEntry } from './tar.js';

const MAGIC = 'DVMUPPR1';
const TYPES: Record<string, EntryType> = {
  f: 'file',
  d: 'directory',
  l: 'symlink',
  h: 'link',
  c: 'character-device',
  b: 'block-device',
  p: 'fifo',
};
/** bounds on what one entry may hold (Linux allows far less: PATH_MAX, XATTR_SIZE_MAX, XATTR_LIST_MAX) */
const MAX_PATH = 1 << 16;
const MAX_XATTRS = 1 << 12;
const MAX_XATTR_NAME = 255;
const MAX_XATTR_VALUE = 1 << 16;
/** a path's components: no Linux filesystem names a file longer (NAME_MAX), so only a forged manifest does */
const MAX_NAME = 255;
const EXTENT_UNWRITTEN = 1;

export interface UpperManifestSource {
  /** the file (the output disk's image) whose first `size` bytes are the manifest */
  path: string;
  size: number;
  /** the disk image the extents point into (the scratch disk) */
  disk: string;
  /** names the manifest in errors */
  source: string;
}

/** The manifest's entries, each regular file with the pieces its content is made of. */
export function* readUpperManifest(manifest: UpperManifestSource): Generator<LayerEntry> {
  const diskSize = statSync(manifest.disk).size;
  const reader = new Cursor(manifest);
  try {
    if (reader.bytes(MAGIC.length).toString('latin1') !== MAGIC) throw reader.corrupt('it does not start with the manifest\'s magic');
    let count = 0;
    for (;;) {
      const tag = reader.u8();
      if (tag === 0x5a /* Z */) {
        if (reader.u64() !== count) throw reader.corrupt('its entry count does not match its entries');
        if (reader.position !== manifest.size) throw reader.corrupt('bytes follow its end');
        return;
      }
      if (tag !== 0x45 /* E */) throw reader.corrupt(`unknown record ${tag}`);
      yield readEntry(reader, manifest, diskSize, count === 0);
      count++;
    }
  } finally {
    reader.close();
  }
}

/** `first`: the first entry is the upper itself, path "" (a directory); no other may name the root. */
function readEntry(reader: Cursor, manifest: UpperManifestSource, diskSize: number, first: boolean): LayerEntry {
  const raw = reader.string(MAX_PATH);
  const path = first && raw === '' ? '' : checkedPath(raw, manifest.source);
  reader.entry = path;
  const code = String.fromCharCode(reader.u8());
  const type = TYPES[code];
  if (!type) throw reader.corrupt(`unknown entry type ${JSON.stringify(code)}`);
  if (path === '' && type !== 'directory') throw reader.corrupt('a root that is not a directory');
  const mode = reader.u32();
  if (mode > 0o7777) throw reader.corrupt('a mode beyond 07777');
  const uid = reader.u32();
  const gid = reader.u32();
  const seconds = reader.i64();
  const nanoseconds = reader.u32();
  if (nanoseconds >= 1e9) throw reader.corrupt('an mtime with more than a second of nanoseconds');
  const size = reader.u64();
  if (type !== 'file' && size !== 0) throw reader.corrupt(`a size for a ${type}`);
  const devmajor = reader.u32();
  const devminor = reader.u32();
  const link = reader.string(MAX_PATH);
  const entry: TarEntry = { path, type, mode, uid, gid, size, mtime: tarMtime(seconds, nanoseconds) };
  if (type === 'symlink') {
    if (link.includes('\0')) throw reader.corrupt('a NUL in its symlink target');
    entry.linkname = link;
  } else if (type === 'link') {
    entry.linkname = checkedPath(link, manifest.source);
  } else if (link !== '') {
    throw reader.corrupt(`a link target for a ${type}`);
  }
  if (type === 'character-device' || type === 'block-device') {
    entry.devmajor = devmajor;
    entry.devminor = devminor;
  }
  const xattrCount = reader.u32();
  if (xattrCount > MAX_XATTRS) throw reader.corrupt(`${xattrCount} xattrs`);
  for (let i = 0; i < xattrCount; i++) {
    const name = reader.string(MAX_XATTR_NAME);
    if (name === '' || name.includes('\0')) throw reader.corrupt('an empty xattr name or one with a NUL');
    const value = Buffer.from(reader.bytes(reader.length(MAX_XATTR_VALUE)));
    (entry.xattrs ??= {})[tarXattrName(name)] = value;
  }
  const body = reader.u8();
  if (type !== 'file') {
    if (body !== 0) throw reader.corrupt(`content for a ${type}`);
    return { entry };
  }
  if (body === 0x69 /* i: the bytes follow */) {
    const offset = reader.position;
    reader.skip(size);
    return size > 0 ? { entry, body: { file: manifest.path, offset } } : { entry };
  }
  if (body !== 0x78 /* x */) throw reader.corrupt('a file without extents or content');
  const pieces = extentPieces(reader, manifest.disk, diskSize, size);
  return size > 0 ? { entry, body: { pieces } } : { entry };
}

/**
 * A file's extents as the pieces of its `size` bytes: in order, not overlapping, inside the disk image;
 * the parts of an extent past the end of the file (preallocated blocks, the last block's tail) are cut
 * off; what no extent covers, and unwritten extents, are zeros.
 */
function extentPieces(reader: Cursor, disk: string, diskSize: number, size: number): BodyPiece[] {
  const count = reader.u32();
  const pieces: BodyPiece[] = [];
  let end = 0; // the file offset the pieces reach
  const zeros = (length: number) => {
    const last = pieces.at(-1);
    if (last && 'zeros' in last) last.zeros += length;
    else pieces.push({ zeros: length });
  };
  let previous = 0;
  for (let i = 0; i < count; i++) {
    const logical = reader.u64();
    const physical = reader.u64();
    const length = reader.u64();
    const flags = reader.u32();
    if (length === 0 || logical < previous || logical + length > Number.MAX_SAFE_INTEGER) throw reader.corrupt('extents that are empty, out of order or overlapping');
    if ((flags & ~EXTENT_UNWRITTEN) !== 0) throw reader.corrupt(`extent flags ${flags}`);
    previous = logical + length;
    if (logical >= size) continue;
    const used = Math.min(length, size - logical);
    if (physical + used > diskSize) throw reader.corrupt(`an extent beyond the end of the scratch disk (${physical + used} > ${diskSize} bytes)`);
    if (logical > end) zeros(logical - end);
    if (flags & EXTENT_UNWRITTEN) zeros(used);
    else pieces.push({ file: disk, offset: physical, length: used });
    end = logical + used;
  }
  if (end < size) zeros(size - end);
  return pieces;
}

/** A path as the layer writer needs it: relative, canonical ("a/b"), no "..", no NUL, not the root. */
function checkedPath(raw: string, source: string): string {
  const path = normalizePath(raw, { source });
  if (path !== raw || path === '' || path.includes('\0')) {
    throw new UnsafeTarEntryError(`${source}: entry ${printable(raw)} is not a plain relative path`, { source, entry: raw });
  }
  const long = path.split('/').find((name) => name.length > MAX_NAME);
  if (long !== undefined) {
    throw new UnsafeTarEntryError(`${source}: entry ${printable(path.slice(0, 64))}… has a name of ${long.length} bytes (Linux allows ${MAX_NAME})`, { source, entry: path });
  }
  return path;
}

/**
 * The mtime GNU tar's archive gave the old pack step (and so the layer): tar stores seconds and
 * nanoseconds as a decimal (PAX `mtime=S.NNNNNNNNN`, negative times as -(S+1).(1e9-N)), which the
 * reader parses as a double and floors. Kept exactly, so both ways of packing give the same bytes.
 */
export function tarMtime(seconds: number, nanoseconds: number): number {
  if (nanoseconds === 0) return seconds;
  const fraction = (seconds < 0 ? 1e9 - nanoseconds : nanoseconds).toString().padStart(9, '0');
  return Math.floor(Number(seconds < 0 ? `-${-(seconds + 1)}.${fraction}` : `${seconds}.${fraction}`));
}

/** GNU tar writes an xattr named with "%" or "=" as SCHILY.xattr.NAME with those two percent-encoded. */
export function tarXattrName(name: string): string {
  return name.replace(/[%=]/g, (c) => (c === '%' ? '%25' : '%3D'));
}

/** Sequential reads of the manifest, every one inside its size. */
class Cursor {
  position = 0;
  /** the entry being read, for errors */
  entry = '';
  readonly #reader: RangeReader;

  constructor(private readonly manifest: UpperManifestSource) {
    this.#reader = new RangeReader(manifest.path);
    if (manifest.size > this.#reader.size) {
      this.#reader.close();
      throw new TarFormatError(`${manifest.source}: the manifest is said to be ${manifest.size} bytes, but the disk holds ${this.#reader.size}`, { source: manifest.source });
    }
  }

  corrupt(what: string): TarFormatError {
    const where = this.entry ? ` at entry ${printable(this.entry)}` : '';
    return new TarFormatError(`${this.manifest.source}: not a valid upper manifest${where}: ${what} (truncated or corrupt?)`, {
      source: this.manifest.source,
      ...(this.entry ? { entry: this.entry } : {}),
    });
  }

  skip(length: number): void {
    if (length > this.manifest.size - this.position) throw this.corrupt('it ends early');
    this.position += length;
  }

  /** a view that stays valid until the next read */
  bytes(length: number): Buffer {
    const at = this.position;
    this.skip(length);
    if (length === 0) return Buffer.alloc(0);
    const view = this.#reader.peek(at, length);
    if (view.length !== length) throw this.corrupt('it ends early');
    return view;
  }

  u8(): number {
    return this.bytes(1)[0]!;
  }

  u32(): number {
    return this.bytes(4).readUInt32BE(0);
  }

  u64(): number {
    const value = this.bytes(8).readBigUInt64BE(0);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw this.corrupt(`a number beyond 2^53 (${value})`);
    return Number(value);
  }

  i64(): number {
    const value = this.bytes(8).readBigInt64BE(0);
    if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < BigInt(Number.MIN_SAFE_INTEGER)) throw this.corrupt(`a number beyond 2^53 (${value})`);
    return Number(value);
  }

  /** a u32 length, at most `max` */
  length(max: number): number {
    const length = this.u32();
    if (length > max) throw this.corrupt(`a length of ${length} bytes (at most ${max})`);
    return length;
  }

  /** a length-prefixed binary string (latin1: one char per byte, as tar.ts keeps paths) */
  string(max: number): string {
    return this.bytes(this.length(max)).toString('latin1');
  }

  close(): void {
    this.#reader.close();
  }
}
