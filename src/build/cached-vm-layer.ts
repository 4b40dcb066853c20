// run-as-root's one VM step through the build cache: its key is the base's diff_ids, the scripts, what
// copyToRoot copies (hashed as the layer would hold it), the script's environment, the network, the mtime
// clamp, the platform and the guest's version. A hit reuses the stored layer and boots no VM; a miss
// builds it in the VM and stores it.
import { link, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { sha256, type Digest } from '../image/digest.js';
import type { Image } from '../image/image.js';
import type { BuildSpec } from '../spec/load.js';
import { BuildCache, type BuildCacheOptions } from '../cache/build-cache.js';
import { canonicalJson } from '../cache/canonical-json.js';
import { hashDirectory, hashFile } from '../cache/file-hash.js';
import { guestVersion } from '../cache/guest-version.js';
import { stepKey } from '../cache/key.js';
import type { Platform } from '../image/config.js';
import { scriptEnvironment } from './config.js';
import { describePlatform } from './platform.js';
import type { Architecture } from '../vm/architectures.js';
import { buildLayerInVm, type VmBuildOptions } from './vm-layer.js';

/** The history line run-as-root gives its layer (src/build/run-as-root.ts). */
export const RUN_AS_ROOT_CREATED_BY = 'dockvm run-as-root';

export interface CachedVmLayer {
  path: string;
  diffId: Digest;
  size: number;
  /** the step's key, and where its layer was found: "local", "docker://REG/REPO", or null when it was built now; null when not cacheable */
  cache: { key: Digest; hit: string | null } | null;
}

/** The layer of the spec's VM step: from the cache when it has it, else built (booting the VM) and stored. */
export async function vmLayerThroughCache(
  spec: BuildSpec,
  base: Image | undefined,
  /** the copyToRoot tar as placed over the base (src/build/copy-over-base.ts) */
  copy: string | undefined,
  buildPlatform: Platform,
  tmp: string,
  clampMtime: number,
  options: VmBuildOptions & { cache?: BuildCacheOptions },
): Promise<CachedVmLayer> {
  // created "now" without SOURCE_DATE_EPOCH: every build's layer differs (its mtimes), on purpose
  if (spec.created === 'now' && !process.env.SOURCE_DATE_EPOCH) {
    return { ...(await buildLayerInVm(spec, base, copy, tmp, clampMtime, options)), cache: null };
  }
  const cache = new BuildCache(options.cache);
  const platform = describePlatform(buildPlatform);
  const key = await runAsRootKey(spec, base, clampMtime, platform, options.architecture);
  const hit = await cache.lookup(key);
  if (hit) {
    return { path: await holdLayer(hit.path, join(tmp, 'cached-layer.tar')), diffId: hit.entry.diffId, size: hit.entry.size, cache: { key, hit: hit.source } };
  }
  const built = await buildLayerInVm(spec, base, copy, tmp, clampMtime, options);
  await cache.store(key, built, { createdBy: RUN_AS_ROOT_CREATED_BY, platform });
  return { path: built.path, diffId: built.diffId, size: built.size, cache: { key, hit: null } };
}

/** The key of the spec's VM step over `base`. */
export async function runAsRootKey(spec: BuildSpec, base: Image | undefined, clampMtime: number, platform: string, architecture?: Architecture): Promise<Digest> {
  const imageEnv = [...(base?.config.config?.Env ?? []), ...(spec.config?.Env ?? [])];
  const [copyToRoot, guest] = await Promise.all([copyToRootDigest(spec, clampMtime), guestVersion(process.env, architecture)]);
  return stepKey({
    parent: { baseDiffIds: base?.config.rootfs.diff_ids ?? [] },
    // the scripts as written, framed so that no two pairs read alike
    instruction: JSON.stringify([spec.runAsRoot ?? '', spec.extraCommands]),
    inputs: copyToRoot ? { copyToRoot } : {},
    env: scriptEnvironment(imageEnv, spec.env),
    network: spec.network ? 'user' : 'none',
    options: { clampMtime, uid: spec.uid, gid: spec.gid, keepContentsDirlinks: spec.keepContentsDirlinks },
    platform,
    guest,
  });
}

/** What copyToRoot copies, source by source in order (later sources win): directories as the walk sees them, tarballs by their bytes. */
async function copyToRootDigest(spec: BuildSpec, clampMtime: number): Promise<Digest | undefined> {
  if (spec.copyToRoot.length === 0) return undefined;
  const sources = await Promise.all(
    spec.copyToRoot.map(async (source) => {
      // an unreadable source gets copyToRoot's own error when the layer is built
      const info = await stat(source).catch(() => undefined);
      if (info?.isDirectory()) {
        const walk = { uid: spec.uid, gid: spec.gid, followDirSymlinks: !spec.keepContentsDirlinks, clampMtime };
        return { directory: await hashDirectory(source, walk) };
      }
      return info?.isFile() ? { tarball: await hashFile(source) } : { unreadable: source };
    }),
  );
  return sha256(canonicalJson(sources));
}

/**
 * The cached tar, hard-linked into the build's temp dir where it can be: a prune running meanwhile in
 * another process then cannot take it away before the archive is written. Else the cached path itself.
 */
async function holdLayer(path: string, held: string): Promise<string> {
  try {
    await link(path, held);
    return held;
  } catch {
    return path;
  }
}
