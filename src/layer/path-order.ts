// The order of entries in every tar dockvm writes (layers and exports): by path, compared component by
// component as bytes, so that a directory's entries follow it directly ("a", "a/b", "a-b", not "a",
// "a-b", "a/b"). Paths are binary strings (one char per byte), so comparing char codes compares bytes;
// "/" sorts below every byte. One exception: a directory's opaque marker comes first among its
// children, before the entries it must not hide (DESIGN.md, whiteouts back to OCI form).
import { OPAQUE_MARKER } from './overlay.js';

const SLASH = 0x2f;
const MARKER_SUFFIX = `/${OPAQUE_MARKER}`;

export function comparePaths(a: string, b: string): number {
  const aMarker = a === OPAQUE_MARKER || a.endsWith(MARKER_SUFFIX);
  const bMarker = b === OPAQUE_MARKER || b.endsWith(MARKER_SUFFIX);
  if (aMarker !== bMarker) {
    if (aMarker && isInside(b, a.slice(0, a.length - OPAQUE_MARKER.length))) return -1;
    if (bMarker && isInside(a, b.slice(0, b.length - OPAQUE_MARKER.length))) return 1;
  }
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) return (x === SLASH ? -1 : x) - (y === SLASH ? -1 : y);
  }
  return a.length - b.length;
}

/** Whether `path` lies under the directory whose children start with `prefix` ("" or "dir/"). */
function isInside(path: string, prefix: string): boolean {
  return path.startsWith(prefix) && path.length > prefix.length;
}
