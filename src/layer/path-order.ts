// The order of an exported tar: by path, compared component by component as bytes, so that a
// directory's entries follow it directly ("a", "a/b", "a-b", not "a", "a-b", "a/b"). Paths are binary
// strings (one char per byte), so comparing char codes compares bytes; "/" sorts below every byte.
const SLASH = 0x2f;

export function comparePaths(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) return (x === SLASH ? -1 : x) - (y === SLASH ? -1 : y);
  }
  return a.length - b.length;
}
