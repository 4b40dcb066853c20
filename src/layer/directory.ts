// A host directory as tar entries, for copyToRoot and for layers built on the host. Names are read as
// bytes (binary strings, like every tar path in dockvm), children in byte order, hard links detected by
// inode. Host xattrs are not read (Node has no API for them; nixpkgs' rsync -a does not copy them either).
import { lstat, readdir, readlink, stat } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import type { EntryType, TarEntry } from './tar.js';
import { printable } from './tar.js';
import { UnsafeTarEntryError } from '../errors.js';

export interface WalkOptions {
  /** force every entry's owner (copyToRoot's uid/gid); default: keep the host's */
  uid?: number;
  gid?: number;
  /**
   * Copy a symlink that points to a directory as that directory (rsync -k, nixpkgs' default for
   * copyToRoot); false keeps it as a symlink (keepContentsDirlinks, rsync -K).
   */
  followDirSymlinks: boolean;
}

export interface WalkedEntry {
  entry: TarEntry;
  /** host path of a regular file's content (a Buffer, to keep non-UTF-8 names) */
  file?: Buffer;
}

/** Every entry below `root` (not `root` itself), parents before children, siblings in byte order. */
export async function* walkDirectory(root: string, options: WalkOptions): AsyncGenerator<WalkedEntry> {
  const inodes = new Map<string, string>();
  const rootPath = Buffer.from(root);
  const visiting = new Set<string>([(await stat(rootPath)).ino.toString()]);
  yield* walk(rootPath, '', options, inodes, visiting);
}

async function* walk(
  dir: Buffer,
  relative: string,
  options: WalkOptions,
  inodes: Map<string, string>,
  visiting: Set<string>,
): AsyncGenerator<WalkedEntry> {
  const names = (await readdir(dir, { encoding: 'buffer' })).sort(Buffer.compare);
  for (const name of names) {
    const hostPath = Buffer.concat([dir, Buffer.from('/'), name]);
    const path = relative === '' ? name.toString('latin1') : `${relative}/${name.toString('latin1')}`;
    let stats = await lstat(hostPath);
    if (stats.isSymbolicLink() && options.followDirSymlinks) {
      const target = await stat(hostPath).catch(() => undefined);
      if (target?.isDirectory()) stats = target;
    }
    if (stats.isSocket()) continue; // a tar cannot hold a socket; tar and rsync skip them too
    const entry = toEntry(path, stats, options);
    if (stats.isSymbolicLink()) {
      entry.linkname = (await readlink(hostPath, { encoding: 'buffer' })).toString('latin1');
    }
    if (stats.isFile() && stats.nlink > 1) {
      const key = `${stats.dev}:${stats.ino}`;
      const first = inodes.get(key);
      if (first !== undefined) {
        yield { entry: { ...entry, type: 'link', size: 0, linkname: first } };
        continue;
      }
      inodes.set(key, path);
    }
    if (stats.isDirectory()) {
      const key = `${stats.dev}:${stats.ino}`;
      if (visiting.has(key)) {
        throw new UnsafeTarEntryError(`${printable(path)}: a symlink loop in ${dir.toString()} (a directory symlink points to its own parent)`);
      }
      yield { entry };
      visiting.add(key);
      yield* walk(hostPath, path, options, inodes, visiting);
      visiting.delete(key);
      continue;
    }
    yield stats.isFile() ? { entry, file: hostPath } : { entry };
  }
}

function toEntry(path: string, stats: Stats, options: WalkOptions): TarEntry {
  const type = entryType(stats);
  const entry: TarEntry = {
    path,
    type,
    mode: stats.mode & 0o7777,
    uid: options.uid ?? stats.uid,
    gid: options.gid ?? stats.gid,
    size: type === 'file' ? stats.size : 0,
    mtime: Math.floor(stats.mtimeMs / 1000),
  };
  if (type === 'character-device' || type === 'block-device') {
    entry.devmajor = Number((BigInt(stats.rdev) >> 8n) & 0xfffn) | Number((BigInt(stats.rdev) >> 32n) & ~0xfffn);
    entry.devminor = Number(BigInt(stats.rdev) & 0xffn) | Number((BigInt(stats.rdev) >> 12n) & ~0xffn);
  }
  return entry;
}

function entryType(stats: Stats): EntryType {
  if (stats.isFile()) return 'file';
  if (stats.isDirectory()) return 'directory';
  if (stats.isSymbolicLink()) return 'symlink';
  if (stats.isCharacterDevice()) return 'character-device';
  if (stats.isBlockDevice()) return 'block-device';
  return 'fifo';
}
