// "/" itself is in no layer: Docker (overlay2's diff and its naive differ), BuildKit (its overlay and
// walking differs) and buildah write no root entry, and moby, containerd and containers/storage skip
// one when they unpack a layer (a container's "/" is its writable layer's, made by the runtime). So a
// `chmod 0700 /` or `chown 1:1 /` in runAsRoot or extraCommands cannot reach the image, there as here;
// dockvm says so instead of dropping it silently.
import { OVERLAY_XATTR_PREFIX } from '../layer/overlay.js';
import type { TarEntry } from '../layer/tar.js';

/**
 * The upper directory's root as vm/build/guest.sh makes it (mkdir under the kernel's umask 022), which
 * is what the script sees as "/" (the merged root of an overlay is its upper's).
 */
const UPPER_ROOT = { mode: 0o755, uid: 0, gid: 0 } as const;

/** A warning when the packed upper's root entry says "/" was changed, else undefined. */
export function rootChangeWarning(root: TarEntry | undefined): string | undefined {
  if (!root) return undefined;
  const changes: string[] = [];
  if (root.mode !== UPPER_ROOT.mode) changes.push(`mode ${root.mode.toString(8).padStart(4, '0')}`);
  if (root.uid !== UPPER_ROOT.uid || root.gid !== UPPER_ROOT.gid) changes.push(`owner ${root.uid}:${root.gid}`);
  const xattrs = Object.keys(root.xattrs ?? {}).filter((name) => !name.startsWith(OVERLAY_XATTR_PREFIX));
  if (xattrs.length > 0) changes.push(`xattrs ${xattrs.sort().join(', ')}`);
  if (changes.length === 0) return undefined;
  return (
    `the script changed / itself (${changes.join(', ')}), which no layer carries: the image's / stays as the ` +
    'container runtime makes it (Docker, BuildKit and buildah drop such a change too)'
  );
}
