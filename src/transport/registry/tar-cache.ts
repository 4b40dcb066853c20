// Layer tars downloaded from registries, kept in dockvm's cache by diff_id (DOCKVM_CACHE/tars/HEX.tar),
// so that the next build over the same base, or the next spec of a nightly refresh whose bases moved to
// the same digest, reads them instead of downloading and gunzipping them again. A tar enters the cache
// only whole, checked against its diff_id and synced (written beside its place, then renamed), and each
// process checks an entry again the first time it uses it (on a worker thread: 0.2 s for 200 MB, where a
// download costs seconds). DOCKVM_TAR_CACHE=off downloads every time.
import { mkdir, open, rename, rm, stat } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { hex, type Digest } from '../../image/digest.js';
import { cacheDir } from '../../cache-dir.js';
import { verifyLocalTars } from '../../layer/verify-in-place.js';

export interface CachedTar {
  path: string;
  size: number;
}

function enabled(): boolean {
  return process.env.DOCKVM_TAR_CACHE !== 'off';
}

function directory(): string {
  return join(cacheDir(), 'tars');
}

/** Tars this process has checked against their diff_id (a cache entry is hashed once per process). */
const checked = new Map<Digest, Promise<boolean>>();

/**
 * The cached tar of `diffId`, or undefined. Checked against the diff_id the first time this process
 * uses it (on a worker thread): a file damaged on disk (or by hand) is removed and downloaded again,
 * never handed out, nor made into a squashfs image.
 */
export async function cachedTar(diffId: Digest): Promise<CachedTar | undefined> {
  if (!enabled()) return undefined;
  const path = join(directory(), `${hex(diffId)}.tar`);
  let size: number;
  try {
    const info = await stat(path);
    if (!info.isFile()) return undefined;
    size = info.size;
  } catch {
    return undefined;
  }
  let verdict = checked.get(diffId);
  if (!verdict) {
    verdict = (async () => {
      // A tar is whole 512-byte blocks, and at least its two end blocks.
      if (size < 1024 || size % 512 !== 0) return false;
      return verifyLocalTars([{ path, offset: 0, size, diffId, what: path }]).done.then(
        () => true,
        () => false,
      );
    })();
    checked.set(diffId, verdict);
  }
  if (await verdict) return { path, size };
  checked.delete(diffId);
  await rm(path, { force: true });
  return undefined;
}

/**
 * Where to write the tar of `diffId` so that it can join the cache: a temp name inside it (or undefined
 * when the cache is off or cannot be written: the caller spools elsewhere). `keep` moves it into place.
 */
export async function cacheSlot(diffId: Digest): Promise<{ temp: string; keep(): Promise<CachedTar>; discard(): Promise<void> } | undefined> {
  if (!enabled()) return undefined;
  const dir = directory();
  try {
    await mkdir(dir, { recursive: true });
  } catch {
    return undefined;
  }
  const path = join(dir, `${hex(diffId)}.tar`);
  const temp = join(dir, `.${hex(diffId)}.${randomBytes(6).toString('hex')}.tmp`);
  return {
    temp,
    keep: async () => {
      // On disk before it takes its name: a crash must not leave a named entry with holes in it.
      const handle = await open(temp, 'r');
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(temp, path);
      checked.set(diffId, Promise.resolve(true));
      return { path, size: (await stat(path)).size };
    },
    discard: () => rm(temp, { force: true }),
  };
}
