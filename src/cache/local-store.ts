// The local build cache, in dockvm's cache directory (DOCKVM_BUILD_CACHE_DIR, else CACHE/build-cache):
//   entries/KEY.json   one per step key: { key, diffId, size, createdBy, platform, meta }
//   layers/DIFFID.tar  the layer's uncompressed tar, once per diff_id however many keys name it
// Both are written atomically (a temp name beside the place, renamed). As with registry tars
// (src/transport/registry/tar-cache.ts), each process checks a layer against its diff_id the first time
// it uses it (on a worker thread): a damaged one is dropped, never handed out. So the tar is not synced
// before it takes its name: a crash that leaves it short or with holes costs a rebuild, where an fsync
// cost every build the time to write its layer to the disk (0.4-0.7 s of a 1 GB build, waited for).
// A hit touches the entry and its layer: `dockvm cache prune` drops the least recently used first.
import { copyFile, link, mkdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as z from 'zod';
import { hex, type Digest } from '../image/digest.js';
import { verifyLocalTars } from '../layer/verify-in-place.js';
import { writeAtomically } from '../output.js';
import { cacheDir } from '../cache-dir.js';

/** Bumped when an entry's shape changes; entries of another version are misses. */
export const CACHE_ENTRY_VERSION = 1;

export interface CacheEntry {
  /** the step's key (stepKey) */
  key: Digest;
  /** the layer's diff_id: sha256 of its uncompressed tar */
  diffId: Digest;
  /** bytes of that tar */
  size: number;
  /** the history line of the step ("RUN apt-get install -y curl", "dockvm run-as-root") */
  createdBy: string;
  /** the platform the layer's binaries are for: "linux/amd64" */
  platform: string;
  /** more plain, readable facts about the step (never a secret: entries are shared through registries) */
  meta: Record<string, string>;
}

export interface CachedLayer {
  entry: CacheEntry;
  /** the layer's uncompressed tar in the store (checked against entry.diffId by this process) */
  path: string;
}

/** Where the build cache lives: DOCKVM_BUILD_CACHE_DIR, else build-cache/ in dockvm's cache directory. */
export function buildCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.DOCKVM_BUILD_CACHE_DIR || join(cacheDir(env), 'build-cache');
}

const digest = z.string().regex(/^sha256:[0-9a-f]{64}$/) as unknown as z.ZodType<Digest>;
const entrySchema = z.strictObject({
  cacheEntryVersion: z.literal(CACHE_ENTRY_VERSION),
  key: digest,
  diffId: digest,
  size: z.number().int().min(1024),
  createdBy: z.string(),
  platform: z.string().min(1),
  meta: z.record(z.string(), z.string()),
});

/** Layers this process has checked against their diff_id, by path. */
const checked = new Map<string, Promise<boolean>>();

export class LocalStore {
  constructor(readonly dir: string = buildCacheDir()) {}

  entryPath(key: Digest): string {
    return join(this.dir, 'entries', `${hex(key)}.json`);
  }

  layerPath(diffId: Digest): string {
    return join(this.dir, 'layers', `${hex(diffId)}.tar`);
  }

  /** The entry of `key` and its layer, or undefined. An entry that is damaged, or whose layer is, is removed. */
  async get(key: Digest): Promise<CachedLayer | undefined> {
    const entryPath = this.entryPath(key);
    let text: string;
    try {
      text = await readFile(entryPath, 'utf8');
    } catch {
      return undefined;
    }
    const entry = parseEntry(text);
    if (!entry || entry.key !== key) {
      await rm(entryPath, { force: true });
      return undefined;
    }
    const path = this.layerPath(entry.diffId);
    if (!(await this.#layerIsSound(path, entry))) {
      await rm(entryPath, { force: true });
      return undefined;
    }
    // Recently used: pruned last. A store that cannot be written to still serves hits.
    const now = new Date();
    await Promise.all([utimes(entryPath, now, now), utimes(path, now, now)]).catch(() => undefined);
    return { entry, path };
  }

  /**
   * Store `entry` with its layer, the tar at `tar` (whose diff_id the caller vouches for: it made it, or
   * checked it while downloading). The tar is hard-linked into the store where it can be, else copied.
   */
  async put(entry: CacheEntry, tar: string): Promise<CachedLayer> {
    const path = this.layerPath(entry.diffId);
    await mkdir(join(this.dir, 'layers'), { recursive: true });
    await mkdir(join(this.dir, 'entries'), { recursive: true });
    if ((await sizeOf(path)) !== entry.size) {
      await writeAtomically(path, (temp) => link(tar, temp).catch(() => copyFile(tar, temp)));
      checked.set(path, Promise.resolve(true));
    }
    await writeAtomically(this.entryPath(entry.key), (temp) => writeFile(temp, renderEntry(entry), { mode: 0o644 }));
    return { entry, path };
  }

  async #layerIsSound(path: string, entry: CacheEntry): Promise<boolean> {
    if ((await sizeOf(path)) !== entry.size) return false;
    let verdict = checked.get(path);
    if (!verdict) {
      verdict = verifyLocalTars([{ path, offset: 0, size: entry.size, diffId: entry.diffId, what: path }]).done.then(
        () => true,
        () => false,
      );
      checked.set(path, verdict);
    }
    if (await verdict) return true;
    checked.delete(path);
    await rm(path, { force: true });
    return false;
  }
}

/** The entry's file: its fields in a fixed order, so the same entry is always the same bytes. */
export function renderEntry(entry: CacheEntry): string {
  const { key, diffId, size, createdBy, platform, meta } = entry;
  return `${JSON.stringify({ cacheEntryVersion: CACHE_ENTRY_VERSION, key, diffId, size, createdBy, platform, meta }, null, 2)}\n`;
}

/** An entry file's content, or undefined when it is not one (damaged, or of another version). */
export function parseEntry(text: string): CacheEntry | undefined {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return undefined;
  }
  const parsed = entrySchema.safeParse(json);
  if (!parsed.success) return undefined;
  const { cacheEntryVersion: _version, ...entry } = parsed.data;
  return entry;
}

async function sizeOf(path: string): Promise<number | undefined> {
  try {
    const info = await stat(path);
    return info.isFile() ? info.size : undefined;
  } catch {
    return undefined;
  }
}
