// spec.json's step (a RootStep): its build cache key. The key is the one run-as-root has always
// used, so a cache filled before run-as-root became a plan still answers: the base's diff_ids, the
// scripts, what copyToRoot copies (hashed as the layer would hold it), the script's environment, the
// network, the mtime clamp, the owners, the platform and the guest's version.
import { stat } from 'node:fs/promises';
import { sha256, type Digest } from '../image/digest.js';
import { canonicalJson } from '../cache/canonical-json.js';
import { hashDirectory, hashFile } from '../cache/file-hash.js';
import { stepKey } from '../cache/key.js';
import type { RootStep } from '../plan/plan.js';

/** The key of `step` over a base of `baseDiffIds`. */
export async function rootStepKey(step: RootStep, baseDiffIds: readonly Digest[], clampMtime: number, platform: string, guest: string): Promise<Digest> {
  const copyToRoot = await copyToRootDigest(step, clampMtime);
  return stepKey({
    parent: { baseDiffIds },
    // the scripts as written, framed so that no two pairs read alike
    instruction: JSON.stringify([step.runAsRoot ?? '', step.extraCommands]),
    inputs: copyToRoot ? { copyToRoot } : {},
    env: step.env,
    network: step.network ? 'user' : 'none',
    options: { clampMtime, uid: step.uid, gid: step.gid, keepContentsDirlinks: step.keepContentsDirlinks },
    platform,
    guest,
  });
}

/** What copyToRoot copies, source by source in order (later sources win): directories as the walk sees them, tarballs by their bytes. */
async function copyToRootDigest(step: RootStep, clampMtime: number): Promise<Digest | undefined> {
  if (step.copyToRoot.length === 0) return undefined;
  const sources = await Promise.all(
    step.copyToRoot.map(async (source) => {
      // an unreadable source gets copyToRoot's own error when its tar is written
      const info = await stat(source).catch(() => undefined);
      if (info?.isDirectory()) {
        const walk = { uid: step.uid, gid: step.gid, followDirSymlinks: !step.keepContentsDirlinks, clampMtime };
        return { directory: await hashDirectory(source, walk) };
      }
      return info?.isFile() ? { tarball: await hashFile(source) } : { unreadable: source };
    }),
  );
  return sha256(canonicalJson(sources));
}
