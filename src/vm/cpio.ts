// A deterministic newc ("070701") cpio writer for the initramfs: entries sorted by path (so parents come
// before children), inode numbers assigned in that order, owner 0:0, one fixed mtime.
export type CpioEntry =
  | { readonly path: string; readonly type: 'dir'; readonly mode: number }
  | { readonly path: string; readonly type: 'file'; readonly mode: number; readonly data: Buffer }
  | { readonly path: string; readonly type: 'symlink'; readonly target: string }
  | { readonly path: string; readonly type: 'chardev'; readonly mode: number; readonly major: number; readonly minor: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function hex8(value: number): string {
  return value.toString(16).padStart(8, '0');
}

function pad4(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}

function record(ino: number, mode: number, nlink: number, mtime: number, name: string, data: Buffer, rdev = [0, 0]): Buffer[] {
  const nameBytes = Buffer.from(`${name}\0`, 'utf8');
  const header = Buffer.from(
    '070701' +
      [ino, mode, 0, 0, nlink, mtime, data.length, 0, 0, rdev[0]!, rdev[1]!, nameBytes.length, 0].map(hex8).join(''),
    'latin1',
  );
  return [header, nameBytes, pad4(header.length + nameBytes.length), data, pad4(data.length)];
}

/** The archive's bytes. Paths are relative ("bin/sh"), without a leading "./" or "/". */
export function writeCpio(entries: readonly CpioEntry[], mtime = 0): Buffer {
  const sorted = [...entries].sort((a, b) => Buffer.compare(Buffer.from(a.path), Buffer.from(b.path)));
  const parts: Buffer[] = [];
  let ino = 1;
  let previous: string | undefined;
  for (const entry of sorted) {
    if (entry.path === previous) throw new Error(`cpio: duplicate entry ${entry.path}`);
    previous = entry.path;
    if (entry.type === 'dir') parts.push(...record(ino++, S_IFDIR | entry.mode, 2, mtime, entry.path, Buffer.alloc(0)));
    else if (entry.type === 'file') parts.push(...record(ino++, S_IFREG | entry.mode, 1, mtime, entry.path, entry.data));
    else if (entry.type === 'chardev') {
      parts.push(...record(ino++, S_IFCHR | entry.mode, 1, mtime, entry.path, Buffer.alloc(0), [entry.major, entry.minor]));
    } else parts.push(...record(ino++, S_IFLNK | 0o777, 1, mtime, entry.path, Buffer.from(entry.target)));
  }
  parts.push(...record(0, 0, 1, 0, 'TRAILER!!!', Buffer.alloc(0)));
  return Buffer.concat(parts);
}
