// Build cache entries in a registry (--cache-to / --cache-from docker://REG/REPO), as kaniko's --cache-repo
// keeps them: one tag per key (REPO:<64 hex digits of the key>), an image whose single layer is the cached
// layer (gzip, deterministic: push's own compressor) and whose config records the key, the diff_id and
// createdBy. Pushed and pulled with the registry transport, so an entry is verified like any image: the
// manifest, the config against its digest, the blob against its digest and the tar against its diff_id.
// A tag whose config names another key is poisoned (whoever could push there made it point elsewhere) and
// refused: the layer it carries is never used for this step.
import { DockvmError, ImageReferenceError } from '../errors.js';
import { hex, sha256, type Digest } from '../image/digest.js';
import type { ImageConfig } from '../image/config.js';
import { FileLayer } from '../image/file-layer.js';
import type { Image } from '../image/image.js';
import { parseImageReference } from '../image/reference.js';
import { MANIFEST_ACCEPT, RegistryClient, openRegistryImage, pushImage, type RegistryOptions } from '../transport/registry/index.js';
import { discard } from '../transport/registry/client.js';
import type { CacheEntry, CachedLayer } from './local-store.js';

/** The labels of an entry's config. */
export const ENTRY_LABELS = {
  key: 'dev.dockvm.cache.key',
  createdBy: 'dev.dockvm.cache.created-by',
  meta: 'dev.dockvm.cache.meta',
} as const;

export interface CacheRepository {
  registry: string;
  repository: string;
  /** "docker://REG/REPO", for messages */
  text: string;
}

/** A step whose registry entry is for another key (or is not an entry at all): never used. */
export class PoisonedEntryError extends DockvmError {}

/** "docker://REG/REPO" → the repository. A tag or digest is refused: each entry is tagged by its key. */
export function parseCacheRepository(text: string): CacheRepository {
  if (!text.startsWith('docker://')) {
    throw new ImageReferenceError(`${text}: a build cache in a registry is named docker://HOST/REPO`, { source: text });
  }
  const ref = parseImageReference(text);
  const written = text.slice('docker://'.length);
  const lastPart = written.slice(written.lastIndexOf('/') + 1);
  if (ref.digest !== undefined || lastPart.includes(':') || !ref.registry || !ref.repository) {
    throw new ImageReferenceError(`${text}: name a repository without a tag or digest (docker://HOST/REPO): each cache entry is tagged with its key`, { source: text });
  }
  return { registry: ref.registry, repository: ref.repository, text: `docker://${ref.registry}/${ref.repository}` };
}

/** Where the entry of `key` lives: REPO:<hex of the key>. */
export function entryReference(repo: CacheRepository, key: Digest): string {
  return `docker://${repo.registry}/${repo.repository}:${hex(key)}`;
}

/** The entry as an image: its layer, and a config recording key, diff_id and createdBy (fixed bytes for the same entry). */
export function entryImage(entry: CacheEntry, layerPath: string): Image {
  const [os = 'linux', architecture = 'amd64', variant] = entry.platform.split('/');
  const config: ImageConfig = {
    created: '1970-01-01T00:00:00Z',
    architecture,
    os,
    ...(variant !== undefined ? { variant } : {}),
    config: { Labels: { [ENTRY_LABELS.key]: entry.key, [ENTRY_LABELS.createdBy]: entry.createdBy, [ENTRY_LABELS.meta]: JSON.stringify(entry.meta) } },
    rootfs: { type: 'layers', diff_ids: [entry.diffId] },
    history: [{ created: '1970-01-01T00:00:00Z', created_by: entry.createdBy }],
  };
  const rawConfig = Buffer.from(JSON.stringify(config));
  return { rawConfig, config, configDigest: sha256(rawConfig), layers: [new FileLayer(layerPath, entry.diffId, entry.size)], repoTags: [] };
}

/** Push the entry (its layer at `layerPath`) to the repository, tagged with its key. */
export async function pushEntry(repo: CacheRepository, entry: CacheEntry, layerPath: string, options: RegistryOptions): Promise<void> {
  await pushImage(entryImage(entry, layerPath), entryReference(repo, entry.key), options);
}

/** Whether the repository has a tag for `key` (one HEAD). */
export async function hasEntry(repo: CacheRepository, key: Digest, options: RegistryOptions): Promise<boolean> {
  const client = new RegistryClient(repo.registry, repo.repository, options);
  const response = await client.request('HEAD', `/v2/${repo.repository}/manifests/${hex(key)}`, {
    headers: { accept: MANIFEST_ACCEPT },
    expect: [200, 404],
    what: `cache entry ${hex(key)}`,
  });
  await discard(response);
  return response.status === 200;
}

/**
 * Fetch the entry of `key`, verified, and hand it with its tar to `keep` (which stores it locally) before
 * the download's temp files go. Undefined when the repository has no such tag; a PoisonedEntryError when
 * the tag names another key; any other failure is thrown as it is.
 */
export async function fetchEntry(
  repo: CacheRepository,
  key: Digest,
  options: RegistryOptions,
  keep: (entry: CacheEntry, tar: string) => Promise<CachedLayer>,
): Promise<CachedLayer | undefined> {
  if (!(await hasEntry(repo, key, options))) return undefined;
  const reference = entryReference(repo, key);
  const image = await openRegistryImage(reference, { ...options, keepBlobs: false });
  try {
    const labels = image.config.config?.Labels ?? {};
    const recorded = labels[ENTRY_LABELS.key];
    if (recorded !== key) {
      throw new PoisonedEntryError(
        `the build cache entry ${reference} is for another step: its config names key ${recorded ?? '(none)'}, not ${key}; it was not used (push it again with --cache-to, or delete the tag)`,
        { source: reference, digest: key },
      );
    }
    if (image.layers.length !== 1) {
      throw new PoisonedEntryError(`the build cache entry ${reference} holds ${image.layers.length} layers, not one; it was not used`, { source: reference, digest: key });
    }
    const layer = image.layers[0]!;
    // Downloads the blob (checked against its digest) and spools its tar (checked against the diff_id).
    const tar = await layer.localTar?.();
    if (!tar || tar.offset !== 0) throw new DockvmError(`the build cache entry ${reference} has a layer dockvm cannot unpack (not gzip)`, { source: reference });
    const { os, architecture, variant } = image.config;
    const entry: CacheEntry = {
      key,
      diffId: layer.diffId,
      size: tar.size,
      createdBy: labels[ENTRY_LABELS.createdBy] ?? '',
      platform: [os, architecture, ...(variant ? [variant] : [])].join('/'),
      meta: parseMeta(labels[ENTRY_LABELS.meta]),
    };
    return await keep(entry, tar.path);
  } finally {
    await image.close();
  }
}

function parseMeta(text: string | undefined): Record<string, string> {
  try {
    const value: unknown = JSON.parse(text ?? '{}');
    if (typeof value !== 'object' || value === null || Array.isArray(value)) return {};
    return Object.fromEntries(Object.entries(value).filter((pair): pair is [string, string] => typeof pair[1] === 'string'));
  } catch {
    return {};
  }
}
