// Upper manifests as vm/upper-manifest.c writes them (its header comment has the format), for forging
// what a hostile guest could write instead.
import { writeFileSync } from 'node:fs';

export interface ManifestEntry {
  path: string;
  /** f d l h c b p */
  type?: string;
  mode?: number;
  size?: number;
  link?: string;
  /** the content, inline ('i'); without it a file has no extents ('x', count 0): all holes */
  inline?: Buffer;
}

const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
};
const u64 = (v: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(v));
  return b;
};
const string = (s: string) => Buffer.concat([u32(Buffer.byteLength(s, 'latin1')), Buffer.from(s, 'latin1')]);

/** One entry's record. */
export function record(e: ManifestEntry): Buffer {
  const type = e.type ?? 'f';
  const body = type !== 'f' ? Buffer.from([0]) : e.inline ? Buffer.concat([Buffer.from('i'), e.inline]) : Buffer.concat([Buffer.from('x'), u32(0)]);
  return Buffer.concat([
    Buffer.from('E'), string(e.path), Buffer.from(type), u32(e.mode ?? (type === 'd' ? 0o755 : 0o644)), u32(0), u32(0),
    u64(1000), u32(0), u64(e.size ?? e.inline?.length ?? 0), u32(0), u32(0), string(e.link ?? ''), u32(0), body,
  ]);
}

/** A manifest of the root and `entries` (records given as bytes are written as they are). */
export function manifest(entries: Iterable<ManifestEntry | Buffer>): Buffer {
  const parts = [Buffer.from('DVMUPPR1'), record({ path: '', type: 'd' })];
  let count = 1;
  for (const e of entries) {
    parts.push(Buffer.isBuffer(e) ? e : record(e));
    count++;
  }
  parts.push(Buffer.from('Z'), u64(count));
  return Buffer.concat(parts);
}

/** Write a manifest to `path`; returns its size. */
export function writeManifest(path: string, entries: Iterable<ManifestEntry | Buffer>): number {
  const data = manifest(entries);
  writeFileSync(path, data);
  return data.length;
}
