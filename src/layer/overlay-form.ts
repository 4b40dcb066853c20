// A layer in overlay form, as one tar: what its read-only lower image holds (a squashfs image made by
// tar2sqfs, src/layer/squashfs.ts; an ext4 image unpacked by GNU tar in the build VM for a layer with
// POSIX ACLs, src/build/lowers.ts). Whiteouts become what overlayfs shows (src/layer/overlay.ts). Two
// passes over the layer: its headers first (an opaque marker may come after its directory's entry), then
// the entries.
import type { Readable } from 'node:stream';
import type { Layer } from '../image/image.js';
import { opaqueDirOf, opaqueDirectoryEntry, toOverlayEntry, POSIX_ACL_XATTRS } from './overlay.js';
import { readTar, type TarEntry, type TarWriter } from './tar.js';
import { layerHeaders } from './tar-scan.js';

/** What the first pass finds. */
export interface OverlayFormScan {
  /** directories the layer marks opaque */
  opaqueDirs: Set<string>;
  /** directories the layer has an entry for */
  dirsWithEntry: Set<string>;
  /** how many entries carry a POSIX ACL (system.posix_acl_access or _default), which squashfs cannot hold */
  posixAcls: number;
  /** bytes of the layer's file contents (small layers get small squashfs blocks) */
  contentBytes: number;
}

export async function scanOverlayForm(layer: Layer, what: string): Promise<OverlayFormScan> {
  const scan: OverlayFormScan = { opaqueDirs: new Set(), dirsWithEntry: new Set(), posixAcls: 0, contentBytes: 0 };
  for (const { entry } of await layerHeaders(layer, what)) {
    const dir = opaqueDirOf(entry.path);
    if (dir !== undefined) scan.opaqueDirs.add(dir);
    if (entry.type === 'directory') scan.dirsWithEntry.add(entry.path);
    if (POSIX_ACL_XATTRS.some((name) => entry.xattrs?.[name] !== undefined)) scan.posixAcls++;
    scan.contentBytes += entry.size;
  }
  return scan;
}

export interface OverlayFormOptions {
  /** names the layer in errors */
  what: string;
  /** the xattrs the image can hold (overlayfs' own are dropped in any case) */
  keepXattr?: (name: string) => boolean;
  /**
   * Write an entry for each directory the layer only implies, with the metadata tar2sqfs gives one
   * (0755, root, mtime 0), for a packer that would otherwise invent its own (GNU tar: the time of day).
   */
  declareImpliedDirs?: boolean;
}

/** The second pass: every entry of `layer` in overlay form into `writer`. Returns how many were written. */
export async function writeOverlayForm(layer: Layer, writer: TarWriter, scan: OverlayFormScan, options: OverlayFormOptions): Promise<number> {
  const dirsWithEntry = new Set(scan.dirsWithEntry);
  const written = new Set<string>();
  const add = async (entry: TarEntry, body?: Readable) => {
    if (options.declareImpliedDirs) {
      for (const dir of ancestors(entry.path)) {
        if (written.has(dir) || dirsWithEntry.has(dir)) continue;
        await writer.add({ path: dir, type: 'directory', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 0 });
        written.add(dir);
      }
    }
    await writer.add(entry, body);
    written.add(entry.path);
  };
  for await (const { entry, body } of readTar(await layer.openTar(), { source: options.what })) {
    const dir = opaqueDirOf(entry.path);
    if (dir !== undefined && dir !== '' && !dirsWithEntry.has(dir)) {
      await add(opaqueDirectoryEntry(dir, entry.mtime));
      dirsWithEntry.add(dir);
    }
    for (const converted of toOverlayEntry(entry, scan.opaqueDirs, options.keepXattr)) {
      await add(converted, converted.type === 'file' && converted.size > 0 ? body : undefined);
    }
  }
  return written.size;
}

/** "a/b/c" → "a", "a/b" */
function ancestors(path: string): string[] {
  const found: string[] = [];
  for (let slash = path.indexOf('/'); slash >= 0; slash = path.indexOf('/', slash + 1)) found.push(path.slice(0, slash));
  return found;
}
