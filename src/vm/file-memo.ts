// Values computed from files, remembered across dockvm processes until one of those files changes: what
// every VM start needs (the initramfs's identity, the kernel's digest, QEMU's version) costs 0.5-1 s of
// hashing and helper programs under load, against a restore of 0.3 s. A file counts as unchanged while
// its device, inode, size, mtime and ctime (in ns) are: a write, a rename onto it or a chmod changes the
// ctime, which no tool can set back (what git's index trusts). This code's own file is one of the files
// of every value, so that another dockvm never takes the memo of this one.
import { createHash } from 'node:crypto';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cacheDir } from '../cache-dir.js';
import { writeAtomically } from '../output.js';

/** How many values one memo file keeps (different keys: another DOCKVM_KERNEL, another cache): newest first. */
const KEEP = 16;

interface Entry<T> {
  readonly key: string;
  /** path → signature */
  readonly files: Readonly<Record<string, string>>;
  readonly value: T;
}

/** Each file's signature, and its newest change time (ms); undefined when one is missing. */
async function signatures(paths: readonly string[]): Promise<{ sigs: Record<string, string>; newest: number } | undefined> {
  const sigs: Record<string, string> = {};
  let newest = 0;
  for (const path of paths) {
    const info = await stat(path, { bigint: true }).catch(() => undefined);
    if (info === undefined) return undefined;
    sigs[path] = `${info.dev}:${info.ino}:${info.size}:${info.mtimeNs}:${info.ctimeNs}`;
    newest = Math.max(newest, Number(info.ctimeNs / 1_000_000n), Number(info.mtimeNs / 1_000_000n));
  }
  return { sigs, newest };
}

/** A file changed this shortly before compute() began (or after) may have changed while it read it. */
const SETTLE_MS = 2000;

export interface MemoOptions<T> {
  readonly env?: NodeJS.ProcessEnv;
  /** a remembered value that is no longer usable (the file it names was removed): computed again */
  readonly usable?: (value: T) => boolean;
}

/**
 * `compute()`'s value for `key`, or the one remembered for it while every file it was computed from is
 * unchanged. `compute` names those files; a file that changes while it runs leaves nothing remembered.
 */
export async function memoized<T>(name: string, key: unknown, compute: () => Promise<{ value: T; files: readonly string[] }>, options: MemoOptions<T> = {}): Promise<T> {
  const file = join(cacheDir(options.env), 'memo', `${name}.json`);
  // this code's own path in the id: another checkout's entry (its own vm/ sources, unchanged) is not this one's
  const id = createHash('sha256').update(JSON.stringify([fileURLToPath(import.meta.url), key])).digest('hex');
  const entries = await readFile(file, 'utf8').then((text) => JSON.parse(text) as Entry<T>[], () => [] as Entry<T>[]);
  const known = Array.isArray(entries) ? entries.find((entry) => entry.key === id) : undefined;
  if (known && (options.usable?.(known.value) ?? true)) {
    const now = await signatures(Object.keys(known.files));
    if (now && Object.entries(known.files).every(([path, sig]) => now.sigs[path] === sig)) return known.value;
  }
  const started = Date.now();
  const result = await compute();
  // compute() read the files before these stats: remember its value only when none of them changed
  // since shortly before it began (a file written meanwhile would pair its new signature with old content)
  const after = await signatures([fileURLToPath(import.meta.url), ...new Set(result.files)]);
  if (after && after.newest < started - SETTLE_MS) {
    const fresh: Entry<T>[] = [{ key: id, files: after.sigs, value: result.value }, ...(Array.isArray(entries) ? entries : []).filter((entry) => entry.key !== id)].slice(0, KEEP);
    await mkdir(dirname(file), { recursive: true });
    await writeAtomically(file, (temp) => writeFile(temp, JSON.stringify(fresh))).catch(() => {}); // a read-only cache still works, unremembered
  }
  return result.value;
}
