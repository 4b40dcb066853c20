// Every tar dockvm reads or writes goes through here.
//
// tar-stream does the stream framing (512-byte blocks, padding, backpressure); this module owns the
// header bytes, because a container layer must survive a round trip byte for byte:
//   - names are kept as "binary strings" (latin1: one JS char per byte), so non-UTF-8 names survive;
//   - PAX values are kept as raw bytes, so binary xattrs such as security.capability survive
//     (tar-stream 3 decodes and encodes PAX records as UTF-8, which corrupts them);
//   - PAX records are written only where ustar cannot hold a value, in sorted order, so output is
//     reproducible.
// tar-stream is pinned to an exact version because the two hooks below (`_decodeLongHeader`,
// `_encode`) are internal; test/layer/tar.test.ts fails if they stop being called.
import { Readable } from 'node:stream';
import * as tarStream from 'tar-stream';
import { DockvmError, UnsafeTarEntryError, TarFormatError } from '../errors.js';

export type EntryType = 'file' | 'link' | 'symlink' | 'directory' | 'block-device' | 'character-device' | 'fifo';

/** One tar entry, as dockvm models it. Paths are binary strings (latin1), relative, without a trailing "/". */
export interface TarEntry {
  path: string;
  type: EntryType;
  /** permission bits including setuid, setgid and sticky (0o7777) */
  mode: number;
  uid: number;
  gid: number;
  /** bytes of content; 0 for everything but regular files */
  size: number;
  /** seconds since the epoch */
  mtime: number;
  /** symlink target, or for hard links the path (same form as `path`) of the entry linked to */
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  /** extended attributes (PAX SCHILY.xattr.*): name → raw value */
  xattrs?: Record<string, Buffer>;
  /** user and group names, kept when read; dockvm writes numeric owners only */
  uname?: string;
  gname?: string;
}

export interface ReadTarOptions {
  /** names the tar in errors: an archive path, a layer digest */
  source: string;
  /** reject absolute paths and ".." components (default true): layers are untrusted input */
  strictPaths?: boolean;
}

export interface TarItem {
  entry: TarEntry;
  /** where the entry's content starts in the tar stream (bytes from its start), for reading it again by offset */
  dataOffset: number;
  /** the entry's content; it is drained automatically if not read before the next item */
  body: Readable;
}

const TYPES: Record<string, EntryType> = {
  file: 'file',
  'contiguous-file': 'file',
  link: 'link',
  symlink: 'symlink',
  directory: 'directory',
  'block-device': 'block-device',
  'character-device': 'character-device',
  fifo: 'fifo',
};

/** Read a tar stream entry by entry. Throws TarFormatError on corrupt input, UnsafeTarEntryError on hostile paths. */
export async function* readTar(input: Readable, options: ReadTarOptions): AsyncGenerator<TarItem> {
  const extract = tarStream.extract({ filenameEncoding: 'latin1' } as Parameters<typeof tarStream.extract>[0]);
  keepPaxBytes(extract);
  input.on('error', (err) => extract.destroy(err));
  input.pipe(extract as unknown as NodeJS.WritableStream);
  let last = '';
  try {
    for await (const body of extract) {
      const entry = toEntry(body.header, options);
      last = entry.path;
      // tar-stream's offset is that of the entry's own header block; its content follows that block.
      const dataOffset = (body as unknown as { offset: number }).offset + BLOCK;
      yield { entry, dataOffset, body: body as unknown as Readable };
      // tar-stream's iterator waits for an unread body forever once it outgrows the stream buffers:
      // drain whatever the consumer left.
      (body as unknown as { resume(): void }).resume();
    }
  } catch (err) {
    // Our own errors (also those of the input stream: a digest mismatch, an unreadable source) pass through.
    if (err instanceof DockvmError) throw err;
    const message = err instanceof Error ? err.message : String(err);
    const where = last ? ` after entry ${printable(last)}` : '';
    throw new TarFormatError(`${options.source}: not a valid tar${where}: ${message} (truncated or corrupt?)`, {
      source: options.source,
      cause: err,
    });
  } finally {
    input.unpipe(extract as unknown as NodeJS.WritableStream);
    if (!input.destroyed) input.destroy();
  }
}

/** Make tar-stream keep PAX record values as raw bytes (latin1 strings) instead of decoding UTF-8. */
function keepPaxBytes(extract: tarStream.Extract): void {
  const ex = extract as unknown as {
    _decodeLongHeader(buf: Buffer): void;
    _header: { type: string };
    _pax: Record<string, string> | null;
    _paxGlobal: Record<string, string> | null;
  };
  const original = ex._decodeLongHeader.bind(ex);
  ex._decodeLongHeader = (buf: Buffer) => {
    if (ex._header.type === 'pax-header') {
      ex._pax = { ...(ex._paxGlobal ?? {}), ...decodePax(buf) };
    } else if (ex._header.type === 'pax-global-header') {
      ex._paxGlobal = decodePax(buf);
    } else {
      original(buf);
    }
  };
}

export function decodePax(buf: Buffer): Record<string, string> {
  const records: Record<string, string> = {};
  let at = 0;
  while (at < buf.length) {
    const space = buf.indexOf(0x20, at);
    if (space < 0) break;
    const length = Number.parseInt(buf.toString('latin1', at, space), 10);
    if (!(length > 0) || at + length > buf.length) throw new Error('malformed PAX record');
    const record = buf.toString('latin1', space + 1, at + length - 1);
    const eq = record.indexOf('=');
    if (eq < 0) throw new Error('malformed PAX record');
    records[record.slice(0, eq)] = record.slice(eq + 1);
    at += length;
  }
  return records;
}

function toEntry(header: tarStream.Header, options: ReadTarOptions): TarEntry {
  const rawType = header.type as string;
  const type = TYPES[rawType];
  const path = normalizePath(header.name, options);
  if (!type) {
    throw new TarFormatError(`${options.source}: entry ${printable(path)} has unsupported tar type ${rawType}`, {
      source: options.source,
      entry: path,
    });
  }
  const pax = (header.pax ?? {}) as Record<string, string>;
  const entry: TarEntry = {
    path,
    type,
    mode: header.mode & 0o7777,
    uid: header.uid,
    gid: header.gid,
    size: type === 'file' ? header.size : 0,
    mtime: Math.floor(header.mtime.getTime() / 1000),
  };
  if (type === 'symlink') entry.linkname = header.linkname ?? '';
  if (type === 'link') entry.linkname = normalizePath(header.linkname ?? '', options);
  if (type === 'block-device' || type === 'character-device') {
    entry.devmajor = header.devmajor;
    entry.devminor = header.devminor;
  }
  if (header.uname) entry.uname = header.uname;
  if (header.gname) entry.gname = header.gname;
  applyPax(entry, pax, options.source);
  return entry;
}

/**
 * What an entry's PAX records add to its ustar header: uid, gid and mtime overrides, and xattrs
 * (SCHILY.xattr.* as raw bytes, LIBARCHIVE.xattr.* base64). Shared with tar-scan.ts, so both readers
 * read PAX alike. A malformed uid, gid or mtime is a TarFormatError; a malformed LIBARCHIVE name throws
 * a URIError, which the readers report as a corrupt tar.
 */
export function applyPax(entry: TarEntry, pax: Record<string, string>, source: string): void {
  let xattrs: Record<string, Buffer> | undefined;
  for (const [key, value] of Object.entries(pax)) {
    if (key === 'uid') entry.uid = Number(value);
    else if (key === 'gid') entry.gid = Number(value);
    else if (key === 'mtime') entry.mtime = Math.floor(Number(value));
    else if (key.startsWith('SCHILY.xattr.')) {
      (xattrs ??= {})[key.slice('SCHILY.xattr.'.length)] = Buffer.from(value, 'latin1');
    } else if (key.startsWith('LIBARCHIVE.xattr.')) {
      const name = decodeURIComponent(key.slice('LIBARCHIVE.xattr.'.length));
      (xattrs ??= {})[name] = Buffer.from(value, 'base64');
    }
  }
  if (xattrs) entry.xattrs = xattrs;
  if (!Number.isSafeInteger(entry.uid) || !Number.isSafeInteger(entry.gid) || !Number.isSafeInteger(entry.mtime)) {
    throw new TarFormatError(`${source}: entry ${printable(entry.path)} has a malformed PAX uid, gid or mtime`, { source, entry: entry.path });
  }
}

/**
 * "./a/b/" → "a/b"; the root ("./") → "". Layers are untrusted: with strictPaths an absolute path or a
 * ".." component is an UnsafeTarEntryError naming the entry.
 */
export function normalizePath(raw: string, options: ReadTarOptions): string {
  const strict = options.strictPaths ?? true;
  if (strict && raw.startsWith('/')) {
    throw new UnsafeTarEntryError(`${options.source}: entry ${printable(raw)} has an absolute path`, {
      source: options.source,
      entry: raw,
    });
  }
  const parts = raw.split('/').filter((part) => part !== '' && part !== '.');
  if (strict && parts.includes('..')) {
    throw new UnsafeTarEntryError(`${options.source}: entry ${printable(raw)} has a ".." component`, {
      source: options.source,
      entry: raw,
    });
  }
  return parts.join('/');
}

/** A binary-string path as a person should read it in a message: UTF-8 decoded, control bytes escaped. */
export function printable(path: string): string {
  const text = Buffer.from(path, 'latin1').toString('utf8');
  return JSON.stringify(text);
}

// ---------------------------------------------------------------------------------------------------
// Writing

const BLOCK = 512;
const USTAR_MAX_ID = 0o7777777; // 8-byte octal field: 7 digits + NUL
const USTAR_MAX_SIZE = 0o77777777777; // 12-byte octal field: 11 digits + NUL
const TYPEFLAG: Record<EntryType, string> = {
  file: '0',
  link: '1',
  symlink: '2',
  'character-device': '3',
  'block-device': '4',
  directory: '5',
  fifo: '6',
};

/**
 * A tar writer producing a deterministic byte stream: ustar headers, PAX only where needed, no
 * atime/ctime, numeric owners. `add` resolves once the entry's content has been accepted.
 */
export class TarWriter {
  readonly #pack = tarStream.pack();
  readonly stream: Readable;

  constructor() {
    const pack = this.#pack as unknown as { _encode(header: { dockvm: TarEntry }): void; push(b: Buffer): boolean };
    // Replace tar-stream's header encoder with ours (see the module comment).
    pack._encode = (header) => {
      for (const block of encodeHeader(header.dockvm)) pack.push(block);
    };
    this.stream = Readable.from(this.#pack as AsyncIterable<Buffer>, { objectMode: false });
  }

  /** Add one entry. `body` is required for a regular file with size > 0 and must hold exactly `size` bytes. */
  async add(entry: TarEntry, body?: Buffer | Readable): Promise<void> {
    const size = entry.type === 'file' ? entry.size : 0;
    const header = {
      name: entry.path,
      size,
      type: entry.type,
      mode: entry.mode || 0o644, // tar-stream's own defaulting; the bytes come from `dockvm` below
      mtime: new Date(entry.mtime * 1000),
      linkname: entry.linkname ?? '',
      dockvm: { ...entry, size },
    } as unknown as tarStream.Header;
    await new Promise<void>((resolve, reject) => {
      const done = (err?: Error | null) => (err ? reject(err) : resolve());
      if (body === undefined || Buffer.isBuffer(body)) {
        if (size > 0 && (!body || body.length !== size)) {
          reject(new TarFormatError(`tar entry ${printable(entry.path)}: content is not ${size} bytes`, { entry: entry.path }));
          return;
        }
        // A regular file always gets a buffer, even when empty: tar-stream waits for a body otherwise.
        if (entry.type === 'file') this.#pack.entry(header, body ?? Buffer.alloc(0), done);
        else this.#pack.entry(header, done);
        return;
      }
      const sink = this.#pack.entry(header, done);
      // A failing body destroys the entry, and with it the whole archive (tar-stream destroys the pack);
      // the entry re-emits the error, so it needs a listener of its own or the process dies.
      (sink as unknown as NodeJS.EventEmitter).on('error', reject);
      body.on('error', (err) => sink.destroy(err));
      body.pipe(sink as unknown as NodeJS.WritableStream);
    });
  }

  /** Write the end-of-archive blocks. */
  finish(): void {
    this.#pack.finalize();
  }

  /** Abort: the stream errors with `err`. */
  destroy(err: Error): void {
    this.#pack.destroy(err);
  }
}

/** The header blocks for one entry: an optional PAX extended header, then the ustar header. */
export function encodeHeader(entry: TarEntry): Buffer[] {
  const pax: [string, Buffer][] = [];
  // Directories end in "/" as ustar writers do; the root ("") is written as "./".
  const name = Buffer.from(entry.path === '' ? './' : entry.type === 'directory' ? `${entry.path}/` : entry.path, 'latin1');
  const link = Buffer.from(entry.linkname ?? '', 'latin1');
  const split = splitUstarName(name);
  if (!split) pax.push(['path', name]);
  if (link.length > 100) pax.push(['linkpath', link]);
  if (entry.uid > USTAR_MAX_ID) pax.push(['uid', Buffer.from(String(entry.uid))]);
  if (entry.gid > USTAR_MAX_ID) pax.push(['gid', Buffer.from(String(entry.gid))]);
  const size = entry.type === 'file' ? entry.size : 0;
  if (size > USTAR_MAX_SIZE) pax.push(['size', Buffer.from(String(size))]);
  for (const [key, value] of Object.entries(entry.xattrs ?? {})) pax.push([`SCHILY.xattr.${key}`, value]);

  const blocks: Buffer[] = [];
  if (pax.length > 0) {
    pax.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    const body = Buffer.concat(pax.map(([key, value]) => paxRecord(key, value)));
    const base = entry.path.slice(entry.path.lastIndexOf('/') + 1);
    const paxName = Buffer.from(`PaxHeaders.0/${base}`, 'latin1').subarray(0, 100);
    blocks.push(
      ustarBlock({ name: paxName, prefix: Buffer.alloc(0) }, {
        mode: 0o644, uid: 0, gid: 0, size: body.length, mtime: entry.mtime, typeflag: 'x', link: Buffer.alloc(0),
      }),
    );
    blocks.push(body, Buffer.alloc((BLOCK - (body.length % BLOCK)) % BLOCK));
  }
  blocks.push(
    ustarBlock(split ?? { name: name.subarray(0, 100), prefix: Buffer.alloc(0) }, {
      mode: entry.mode & 0o7777,
      uid: Math.min(entry.uid, USTAR_MAX_ID),
      gid: Math.min(entry.gid, USTAR_MAX_ID),
      size: Math.min(size, USTAR_MAX_SIZE),
      mtime: entry.mtime,
      typeflag: TYPEFLAG[entry.type],
      link: link.subarray(0, 100),
      devmajor: entry.devmajor,
      devminor: entry.devminor,
    }),
  );
  return blocks;
}

/** ustar keeps up to 100 bytes in `name` and 155 more in `prefix`, split at a "/". */
function splitUstarName(name: Buffer): { name: Buffer; prefix: Buffer } | undefined {
  if (name.length <= 100) return { name, prefix: Buffer.alloc(0) };
  // Search from the right for a "/" that leaves a name of at most 100 bytes and a prefix of at most 155.
  const trailing = name[name.length - 1] === 0x2f ? 1 : 0;
  for (let i = name.length - 1 - trailing; i > 0; i--) {
    if (name[i] !== 0x2f) continue;
    const rest = name.length - i - 1;
    if (rest > 100) break;
    if (i <= 155 && rest > 0) return { name: name.subarray(i + 1), prefix: name.subarray(0, i) };
  }
  return undefined;
}

function paxRecord(key: string, value: Buffer): Buffer {
  const payload = Buffer.concat([Buffer.from(` ${key}=`, 'latin1'), value, Buffer.from('\n')]);
  let length = payload.length + 1;
  while (String(length).length + payload.length !== length) length = String(length).length + payload.length;
  return Buffer.concat([Buffer.from(String(length)), payload]);
}

interface UstarFields {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  typeflag: string;
  link: Buffer;
  devmajor?: number | undefined;
  devminor?: number | undefined;
}

function ustarBlock(names: { name: Buffer; prefix: Buffer }, f: UstarFields): Buffer {
  const block = Buffer.alloc(BLOCK);
  names.name.copy(block, 0);
  octal(block, 100, 8, f.mode);
  octal(block, 108, 8, f.uid);
  octal(block, 116, 8, f.gid);
  octal(block, 124, 12, f.size);
  octal(block, 136, 12, Math.max(0, Math.min(f.mtime, 0o77777777777)));
  block.write(f.typeflag, 156, 'latin1');
  f.link.copy(block, 157);
  block.write('ustar\u000000', 257, 'latin1');
  octal(block, 329, 8, f.devmajor ?? 0);
  octal(block, 337, 8, f.devminor ?? 0);
  names.prefix.copy(block, 345);
  // The checksum is computed with its own field as eight spaces, then written as 6 digits, NUL, space.
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of block) sum += byte;
  block.write(`${sum.toString(8).padStart(6, '0')}\u0000 `, 148, 'latin1');
  return block;
}

function octal(block: Buffer, offset: number, width: number, value: number): void {
  block.write(`${Math.trunc(value).toString(8).padStart(width - 1, '0')}\u0000`, offset, 'latin1');
}
