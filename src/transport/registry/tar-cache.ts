// Layer tars downloaded from registries, kept in dockvm's cache by diff_id (DOCKVM_CACHE/tars/HEX.tar),
// so that the next build over the same base, or the next spec of a nightly refresh whose bases moved to
// the same digest, reads them instead of downloading and gunzipping them again. A tar enters the cache
// only whole and checked against its diff_id (written beside its place, then renamed), so what is there
// is trusted as the squashfs images of layers are. DOCKVM_TAR_CACHE=off downloads every time.
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { hex, type Digest } from '../../image/digest.js';
import { cacheDir } from '../../vm/paths.js';

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

/** The cached tar of `diffId`, or undefined. */
export async function cachedTar(diffId: Digest): Promise<CachedTar | undefined> {
  if (!enabled()) return undefined;
  const path = join(directory(), `${hex(diffId)}.tar`);
  try {
    const info = await stat(path);
    return info.isFile() ? { path, size: info.size } : undefined;
  } catch {
    return undefined;
  }
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
      await rename(temp, path);
      return { path, size: (await stat(path)).size };
    },
    discard: () => rm(temp, { force: true }),
  };
}
