// How much a layer made in the build VM may hold. A step's upper can only hold what its scratch disk
// holds, except sparse files: their holes take no room on the disk and all of it in a layer (a tar
// stores them as zeros), so one `truncate -s 1T` would have the host write a TiB into its temp dir.
// The bound is the scratch disk's size: what a layer honestly made on it can hold without holes.
import { closeSync, openSync, readSync } from 'node:fs';
import type { LayerEntry } from './normalize.js';
import { printable } from './tar.js';

const MIB = 1024 * 1024;

/** Why a layer of these entries is refused (its file content exceeds `limitBytes`), or undefined. */
export function layerContentProblem(entries: readonly LayerEntry[], limitBytes: number): string | undefined {
  let total = 0;
  let largest: LayerEntry | undefined;
  for (const item of entries) {
    if (item.entry.type !== 'file') continue;
    total += item.entry.size;
    if (largest === undefined || item.entry.size > largest.entry.size) largest = item;
  }
  if (total <= limitBytes) return undefined;
  return (
    `its layer would hold ${Math.ceil(total / MIB)} MiB of file content, more than the ${Math.floor(limitBytes / MIB)} MiB scratch disk it was made on ` +
    `(a sparse file? a layer stores its holes as zeros); the largest file is ${printable(largest!.entry.path)}, ${Math.ceil(largest!.entry.size / MIB)} MiB`
  );
}

/**
 * The inodes of a freshly made ext4 image (its superblock's s_inodes_count), read on the host before
 * the guest could rewrite it: no upper made on that disk has more entries than it has inodes, except by
 * hard links, so a manifest listing more is forged. It bounds the host's memory for one layer's
 * entries (0.6-1.3 KiB each, measured: test/security/forged-upper.test.ts).
 */
export function ext4InodeCount(image: string): number {
  const superblock = Buffer.alloc(4);
  const fd = openSync(image, 'r');
  try {
    readSync(fd, superblock, 0, 4, 1024);
  } finally {
    closeSync(fd);
  }
  return superblock.readUInt32LE(0);
}

/** The entries of a manifest, refused past `max` (the scratch disk's inodes, hard links included). */
export function boundedEntries<T>(entries: Iterable<T>, max: number): T[] | string {
  const kept: T[] = [];
  for (const entry of entries) {
    if (kept.length >= max) return `its layer lists more than ${max} entries, more than the scratch disk it was made on has inodes (a forged manifest?)`;
    kept.push(entry);
  }
  return kept;
}
