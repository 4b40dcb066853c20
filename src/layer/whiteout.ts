// OCI whiteouts (image-spec layer.md), by name. A layer deletes a path of the layers below it with an
// empty file named `.wh.NAME` beside it, and hides everything the layers below put in a directory with
// `.wh..wh..opq` inside it. Both apply only to lower layers, never to their own layer.
// Paths here are the binary-string paths of src/layer/tar.ts ("a/b", no "./", no trailing "/").
// (overlay.ts converts whiteouts to overlayfs form and back; this module only reads their names.)
import { OPAQUE_MARKER, WHITEOUT_PREFIX } from './overlay.js';

export { OPAQUE_MARKER, WHITEOUT_PREFIX };
/** `.wh..wh.*` names other than the opaque marker are AUFS bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`). */
const META_PREFIX = '.wh..wh.';

export type Whiteout =
  /** `dir/.wh.NAME`: `target` (dir/NAME) and everything under it are deleted from lower layers */
  | { kind: 'whiteout'; target: string }
  /** `dir/.wh..wh..opq`: lower layers' contents of `dir` are hidden ("" is the root) */
  | { kind: 'opaque'; dir: string }
  /** AUFS bookkeeping: means nothing to an OCI consumer and never appears in a filesystem */
  | { kind: 'meta' };

/** What a layer entry's path means as a whiteout, or undefined for an ordinary entry. */
export function parseWhiteout(path: string): Whiteout | undefined {
  const slash = path.lastIndexOf('/');
  const base = path.slice(slash + 1);
  if (!base.startsWith(WHITEOUT_PREFIX)) return undefined;
  const dir = slash < 0 ? '' : path.slice(0, slash);
  if (base === OPAQUE_MARKER) return { kind: 'opaque', dir };
  if (base.startsWith(META_PREFIX)) return { kind: 'meta' };
  const name = base.slice(WHITEOUT_PREFIX.length);
  // ".wh." alone, ".wh.." and ".wh..." name nothing that can exist beside them.
  if (name === '' || name === '.' || name === '..') return { kind: 'meta' };
  return { kind: 'whiteout', target: dir === '' ? name : `${dir}/${name}` };
}

/** The whiteout entry path that deletes `target` ("a/b" → "a/.wh.b"). */
export function whiteoutPath(target: string): string {
  const slash = target.lastIndexOf('/');
  return `${target.slice(0, slash + 1)}${WHITEOUT_PREFIX}${target.slice(slash + 1)}`;
}

/** The marker entry path that makes `dir` opaque ("" is the root). */
export function opaquePath(dir: string): string {
  return dir === '' ? OPAQUE_MARKER : `${dir}/${OPAQUE_MARKER}`;
}
