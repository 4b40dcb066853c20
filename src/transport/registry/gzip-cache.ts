// What each uncompressed layer gzips to when pushed, remembered across runs (in dockvm's cache), so
// that pushing a layer the registry already has costs one HEAD instead of compressing it again: the
// common case of a nightly rebuild that pushes the same base layers over and over. The compression is
// deterministic, so a remembered digest stays true for as long as the compressor (which one, its
// version and settings: layer-gzip.ts) is the same: its id names the cache directory.
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { cacheDir } from '../../cache-dir.js';
import { hex, isDigest, type Digest } from '../../image/digest.js';

function directory(compressor: string): string {
  return join(cacheDir(), 'push-gzip', compressor);
}

/** The remembered gzip blob of the layer `diffId` made by `compressor` (a LayerGzip id), or undefined. */
export async function rememberedGzip(compressor: string, diffId: Digest): Promise<{ digest: Digest; size: number } | undefined> {
  try {
    const [digest, size] = (await readFile(join(directory(compressor), hex(diffId)), 'utf8')).trim().split(' ');
    if (digest && isDigest(digest) && Number.isSafeInteger(Number(size))) return { digest, size: Number(size) };
  } catch {
    // not remembered (or unreadable): compress
  }
  return undefined;
}

/** Remember what `diffId` gzipped to with `compressor`; a cache that cannot be written only costs speed later. */
export async function rememberGzip(compressor: string, diffId: Digest, blob: { digest: Digest; size: number }): Promise<void> {
  try {
    const dir = directory(compressor);
    await mkdir(dir, { recursive: true });
    const temp = join(dir, `.${hex(diffId)}.${randomBytes(6).toString('hex')}.tmp`);
    await writeFile(temp, `${blob.digest} ${blob.size}\n`);
    await rename(temp, join(dir, hex(diffId)));
  } catch {
    // a read-only or full cache: nothing to do
  }
}
