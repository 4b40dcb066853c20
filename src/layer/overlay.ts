// Whiteouts between their two forms (OCI image-spec layer.md ↔ overlayfs), as pure functions on entry
// metadata: bodies never change, so callers can apply them while indexing a tar and copy bodies by offset.
//
//   OCI layer                     overlayfs (lowers, written into squashfs; the guest's upperdir)
//   dir/.wh.NAME (empty file)  ↔  dir/NAME: character device 0/0
//   dir/.wh..wh..opq           ↔  dir with xattr trusted.overlay.opaque=y
//
// overlayfs' own bookkeeping (trusted.overlay.*: origin, impure, redirect, …) never reaches a layer, and
// is stripped from lower layers too: in an OCI layer such an xattr means nothing, in a lower it would
// change what overlayfs shows.
import type { TarEntry } from './tar.js';

export const WHITEOUT_PREFIX = '.wh.';
export const OPAQUE_MARKER = '.wh..wh..opq';
export const OVERLAY_XATTR_PREFIX = 'trusted.overlay.';
export const OPAQUE_XATTR = 'trusted.overlay.opaque';

function baseName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

function parentOf(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash < 0 ? '' : path.slice(0, slash);
}

function join(dir: string, name: string): string {
  return dir === '' ? name : `${dir}/${name}`;
}

/** The directory an opaque marker makes opaque, or undefined if `path` is not an opaque marker. */
export function opaqueDirOf(path: string): string | undefined {
  return baseName(path) === OPAQUE_MARKER ? parentOf(path) : undefined;
}

/** The path a `.wh.NAME` whiteout deletes, or undefined if `path` is not a (non-opaque) whiteout. */
export function whiteoutTarget(path: string): string | undefined {
  const name = baseName(path);
  if (!name.startsWith(WHITEOUT_PREFIX) || name === OPAQUE_MARKER) return undefined;
  return join(parentOf(path), name.slice(WHITEOUT_PREFIX.length));
}

function withoutOverlayXattrs(xattrs: Record<string, Buffer> | undefined, keep: (name: string) => boolean = () => true): Record<string, Buffer> | undefined {
  if (!xattrs) return undefined;
  const kept = Object.entries(xattrs).filter(([name]) => !name.startsWith(OVERLAY_XATTR_PREFIX) && keep(name));
  return kept.length > 0 ? Object.fromEntries(kept) : undefined;
}

/**
 * POSIX ACLs, as a layer carries them: the kernel's binary xattr values in SCHILY.xattr.* records (what
 * GNU tar --xattrs writes, and what moby and containerd give back to setxattr when they unpack a layer).
 */
export const POSIX_ACL_XATTRS = ['system.posix_acl_access', 'system.posix_acl_default'] as const;

function setXattrs(entry: TarEntry, xattrs: Record<string, Buffer> | undefined): TarEntry {
  const { xattrs: _dropped, ...rest } = entry;
  return xattrs ? { ...rest, xattrs } : rest;
}

/**
 * One entry of an OCI layer in overlay form, for a lower layer. `opaqueDirs` are the directories this
 * layer marks opaque (collect them with opaqueDirOf in a first pass: the marker may come after the
 * directory's own entry). Returns [] for an opaque marker: its directory carries the xattr instead
 * (see opaqueDirectoryEntry for a marker whose directory has no entry of its own). `keepXattr` says
 * which xattrs the lower's image can hold.
 */
export function toOverlayEntry(entry: TarEntry, opaqueDirs: ReadonlySet<string>, keepXattr: (name: string) => boolean = () => true): TarEntry[] {
  if (opaqueDirOf(entry.path) !== undefined) return [];
  const target = whiteoutTarget(entry.path);
  if (target !== undefined) {
    return [{ path: target, type: 'character-device', mode: 0, uid: entry.uid, gid: entry.gid, size: 0, mtime: entry.mtime, devmajor: 0, devminor: 0 }];
  }
  const xattrs = withoutOverlayXattrs(entry.xattrs, keepXattr);
  if (entry.type === 'directory' && opaqueDirs.has(entry.path)) {
    return [setXattrs(entry, { ...xattrs, [OPAQUE_XATTR]: Buffer.from('y') })];
  }
  return [setXattrs(entry, xattrs)];
}

/**
 * Directories made opaque whose own entry the layer lacks: the caller emits them (mode 0755, root, as
 * containerd does when it creates a missing parent) so the xattr has somewhere to live.
 */
export function opaqueDirectoryEntry(path: string, mtime: number): TarEntry {
  return { path, type: 'directory', mode: 0o755, uid: 0, gid: 0, size: 0, mtime, xattrs: { [OPAQUE_XATTR]: Buffer.from('y') } };
}

/** Whether an upperdir entry is an overlayfs whiteout: a character device 0/0. */
export function isOverlayWhiteout(entry: TarEntry): boolean {
  return entry.type === 'character-device' && (entry.devmajor ?? 0) === 0 && (entry.devminor ?? 0) === 0;
}

/**
 * One entry of an overlayfs upperdir in OCI form. A whiteout device becomes `.wh.NAME`; an opaque
 * directory becomes the directory plus its `.wh..wh..opq` marker (returned right after it: writers keep
 * the marker before the directory's other children), unless the directory did not exist in the lowers,
 * where opacity means nothing. Permission bits, owner and mtime of the source carry over to the markers,
 * as moby's overlay whiteout converter does.
 */
export function fromOverlayUpperEntry(entry: TarEntry, existedInLowers: (dir: string) => boolean): TarEntry[] {
  if (isOverlayWhiteout(entry)) {
    const marker = join(parentOf(entry.path), WHITEOUT_PREFIX + baseName(entry.path));
    return [{ path: marker, type: 'file', mode: entry.mode & 0o777, uid: entry.uid, gid: entry.gid, size: 0, mtime: entry.mtime }];
  }
  const opaque = entry.type === 'directory' && entry.xattrs?.[OPAQUE_XATTR]?.toString() === 'y';
  const converted = setXattrs(entry, withoutOverlayXattrs(entry.xattrs));
  if (!opaque || !existedInLowers(entry.path)) return [converted];
  const marker: TarEntry = {
    path: join(entry.path, OPAQUE_MARKER),
    type: 'file',
    mode: entry.mode & 0o777,
    uid: entry.uid,
    gid: entry.gid,
    size: 0,
    mtime: entry.mtime,
  };
  return [converted, marker];
}
