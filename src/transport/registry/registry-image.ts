// An image in a registry, opened as an Image: the manifest and config are fetched (and verified) up
// front; each layer is downloaded the first time it is opened (or all at once, in parallel, with
// fetchLayers), its tar kept in dockvm's cache by diff_id (tar-cache.ts: a tar there is not downloaded
// again) and its blob, when kept, in a temp directory, so it can be opened again; close() removes that.
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { DockvmError, ImageFormatError, ImageReferenceError, RegistryError } from '../../errors.js';
import type { Platform } from '../../image/config.js';
import { DigestingStream, hex, sha256, type Digest } from '../../image/digest.js';
import type { Layer } from '../../image/image.js';
import { layerCompression } from '../../image/media-types.js';
import { parseImageReference, type ImageReference } from '../../image/reference.js';
import { checkLayerCount, loadConfig } from '../loaded-image.js';
import type { OpenedImage } from '../opened-image.js';
import type { CheckedDescriptor } from '../schemas.js';
import { chain, describeFailure, openRange } from '../streams.js';
import { RegistryClient, type RegistryOptions } from './client.js';
import { downloadBlob } from './download.js';
import { describeReference, resolveManifest, type FetchedManifest } from './manifest.js';
import { formatPlatform, platformMatches, wantedPlatform } from './platform.js';
import { SpoolSink } from './spool.js';
import { cachedTar, cacheSlot } from './tar-cache.js';
import { createTempDir, removeOnExit, type TempDir } from '../../cleanup.js';
import { openLiveTar, predictTarSize } from './live-tar.js';

export interface OpenRegistryImageOptions extends RegistryOptions {
  /**
   * The platform to choose from an index (missing fields: linux and the host's architecture). Fields
   * given here are also checked against the config of an image that is not in an index.
   */
  platform?: Partial<Platform>;
  /** decompress gzip layers while they download so their tars can be read in place (default true) */
  spoolTars?: boolean;
  /** keep the compressed blobs too (default true); else openBlob downloads a blob again when asked */
  keepBlobs?: boolean;
  /**
   * Keep the first layer (a gzip one) out of fetchLayers, for a docker-archive writer to stream it in
   * as it downloads (streamedTar, live-tar.ts). For pull, which writes archives.
   */
  streamFirstTar?: boolean;
}

export interface FetchOptions {
  /** downloads at once (default 3) */
  concurrency?: number;
  /** called with the length of every chunk received (progress) */
  onBytes?: (count: number) => void;
}

export interface RegistryImage extends OpenedImage {
  readonly registry: string;
  readonly repository: string;
  /** the image manifest, as the registry stores it */
  readonly manifest: FetchedManifest;
  /** what the reference resolved to: the index's digest when the tag names an index */
  readonly referenceDigest: Digest;
  /** the compressed size of every layer, in bytes (what a pull downloads) */
  readonly downloadSize: number;
  /** download every layer not downloaded yet, `concurrency` at a time */
  fetchLayers(options?: FetchOptions): Promise<void>;
}

/** Largest config blob read into memory. */
const CONFIG_LIMIT = 64 * 1024 * 1024;

export async function openRegistryImage(reference: string | ImageReference, options: OpenRegistryImageOptions = {}): Promise<RegistryImage> {
  const ref = typeof reference === 'string' ? parseImageReference(reference) : reference;
  if (ref.transport !== 'docker' || !ref.registry || !ref.repository) {
    throw new ImageReferenceError(`${ref.text}: not a registry reference (docker://HOST/REPO:TAG or …@sha256:…)`, { source: ref.text });
  }
  const client = new RegistryClient(ref.registry, ref.repository, options);
  const target = ref.digest ?? ref.tag ?? 'latest';
  const wanted = wantedPlatform(options.platform);
  const resolved = await resolveManifest(client, target, wanted);
  const what = describeReference(client, target);
  const rawConfig = await fetchSmallBlob(client, resolved.config, CONFIG_LIMIT, `${what}: config`);
  const { config, configDigest } = loadConfig(rawConfig, `${what}: config`, resolved.config.digest);
  checkLayerCount(config, resolved.layers.length, what);
  const asked = options.platform ?? {};
  if ((asked.os !== undefined || asked.architecture !== undefined || asked.variant !== undefined) && !platformMatches(config, wanted)) {
    throw new RegistryError(`${what} is an image for ${formatPlatform(config)}, not ${formatPlatform(wanted)}: choose another tag, or drop --os/--arch/--variant`, {
      source: what,
    });
  }
  const spool = new Spool(client, options.spoolTars !== false, options.keepBlobs !== false);
  const layers = resolved.layers.map((descriptor, i) => new RegistryLayer(spool, descriptor, config.rootfs.diff_ids[i]!, `${what}: layer ${descriptor.digest}`));
  const first = layers[0];
  if (options.streamFirstTar && first && layerCompression(first.descriptor.mediaType) === 'gzip') spool.reserveForStreaming(first);
  const tag = ref.tag !== undefined && ref.digest === undefined ? ref.tag : undefined;
  const image: RegistryImage = {
    rawConfig,
    config,
    configDigest,
    layers,
    repoTags: tag !== undefined ? [`${ref.name}:${tag}`] : [],
    reference: ref.text,
    registry: ref.registry,
    repository: ref.repository,
    manifest: resolved.manifest,
    referenceDigest: resolved.referenceDigest,
    downloadSize: uniqueBy(layers, (layer) => layer.descriptor.digest).reduce((sum, layer) => sum + layer.descriptor.size, 0),
    fetchLayers: (fetchOptions = {}) => {
      spool.onBytes = fetchOptions.onBytes;
      return fetchAll(uniqueBy(layers, (layer) => layer.descriptor.digest).filter((layer) => !spool.isReserved(layer)), fetchOptions);
    },
    close: () => spool.close(),
  };
  return Object.freeze(image);
}

/** GET a small blob (a config) into memory, checked against its descriptor. */
async function fetchSmallBlob(client: RegistryClient, descriptor: CheckedDescriptor, limit: number, what: string): Promise<Buffer> {
  if (descriptor.size > limit) throw new ImageFormatError(`${what}: ${descriptor.size} bytes is larger than ${limit}`, { source: what });
  const response = await client.request('GET', `/v2/${client.repository}/blobs/${descriptor.digest}`, {
    expect: [200, 404],
    what: `config ${descriptor.digest}`,
  });
  if (response.status === 404) throw new RegistryError(`${what}: the registry does not have the config blob ${descriptor.digest} (404)`, { source: what });
  const bytes = Buffer.from(await response.arrayBuffer());
  if (sha256(bytes) !== descriptor.digest || bytes.length !== descriptor.size) {
    throw new DockvmError(`${what}: the config the registry sent does not match its digest ${descriptor.digest}`, { source: what, digest: descriptor.digest });
  }
  return bytes;
}

export interface Spooled {
  /** the blob as stored, when it was kept */
  blobPath?: string;
  /** the uncompressed tar, when it was spooled */
  tar?: { path: string; size: number };
}

/**
 * The temp directory downloads go to, made on first use; downloads are shared by digest. A gzip layer
 * is spooled as its tar (when `spoolTars`) and its blob (when `keepBlobs`, or when no tar is spooled);
 * a blob not kept is downloaded again if openBlob asks for it.
 */
export class Spool {
  #dir: Promise<TempDir> | undefined;
  #closed = false;
  readonly #downloads = new Map<string, Promise<Spooled>>();
  /** the layer kept out of fetchLayers to be streamed, until it is (or is fetched after all) */
  #reserved: RegistryLayer | undefined;
  /** progress of the downloads fetchLayers started, and of a streamed layer */
  onBytes: ((count: number) => void) | undefined;

  constructor(
    readonly client: RegistryClient,
    readonly spoolTars: boolean,
    readonly keepBlobs: boolean,
  ) {}

  reserveForStreaming(layer: RegistryLayer): void {
    this.#reserved = layer;
  }

  isReserved(layer: RegistryLayer): boolean {
    return this.#reserved !== undefined && this.#reserved.descriptor.digest === layer.descriptor.digest;
  }

  /** Take the reservation: true once, for the reserved layer, when nothing has downloaded it yet. */
  takeReservation(layer: RegistryLayer): boolean {
    if (!this.isReserved(layer)) return false;
    this.#reserved = undefined;
    return !this.#closed;
  }

  /** The layer's spool: downloaded now, unless it was already (or is being). */
  fetch(layer: RegistryLayer, onBytes?: (count: number) => void): Promise<Spooled> {
    // Fetched some other way first: it is no longer the streamed one.
    if (this.isReserved(layer)) this.#reserved = undefined;
    const tar = this.spoolTars && layerCompression(layer.descriptor.mediaType) === 'gzip';
    return this.#once(`${layer.descriptor.digest} ${layer.diffId}`, () => this.#download(layer, { tar, blob: this.keepBlobs || !tar }, onBytes));
  }

  /** The path of the layer's blob, downloading it (again) when it was not kept. */
  async blobPath(layer: RegistryLayer): Promise<string> {
    const spooled = await this.fetch(layer);
    if (spooled.blobPath) return spooled.blobPath;
    const again = await this.#once(layer.descriptor.digest, () => this.#download(layer, { tar: false, blob: true }));
    return again.blobPath!;
  }

  #once(key: string, start: () => Promise<Spooled>): Promise<Spooled> {
    if (this.#closed) return Promise.reject(new DockvmError(`${this.client.name}: the image was closed; open it again`));
    let download = this.#downloads.get(key);
    if (!download) {
      download = start();
      this.#downloads.set(key, download);
      // A failed download may be tried again by a later open.
      download.catch(() => this.#downloads.delete(key));
    }
    return download;
  }

  async #download(layer: RegistryLayer, keep: { tar: boolean; blob: boolean }, onBytes?: (count: number) => void): Promise<Spooled> {
    // A tar in dockvm's cache is not downloaded again; only the blob is, when it is to be kept too.
    const cached = keep.tar ? await cachedTar(layer.diffId) : undefined;
    if (cached && !keep.blob) return { tar: cached };
    this.#dir ??= createTempDir('pull');
    const dir = (await this.#dir).path;
    const blobPath = keep.blob ? join(dir, `${hex(layer.descriptor.digest)}.blob`) : undefined;
    // A tar is written into the cache under a temp name, and takes its place there once checked.
    const slot = keep.tar && !cached ? await cacheSlot(layer.diffId) : undefined;
    const tarPath = slot?.temp ?? join(dir, `${hex(layer.diffId)}.tar`);
    const tar = keep.tar && !cached ? { path: tarPath, diffId: layer.diffId, what: layer.what } : undefined;
    const release = slot ? removeOnExit(slot.temp) : undefined;
    const sink = new SpoolSink(blobPath, tar);
    try {
      await downloadBlob(this.client, layer.descriptor, sink, onBytes ? { onBytes } : {});
      await sink.finish();
      const spooled = cached ?? (slot ? await slot.keep() : tar ? { path: tar.path, size: (await stat(tar.path)).size } : undefined);
      return { ...(blobPath !== undefined ? { blobPath } : {}), ...(spooled ? { tar: spooled } : {}) };
    } catch (err) {
      await sink.abort();
      await slot?.discard();
      throw err;
    } finally {
      release?.();
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    await Promise.allSettled(this.#downloads.values());
    if (this.#dir) await (await this.#dir).remove();
  }
}

export class RegistryLayer implements Layer {
  constructor(
    readonly spool: Spool,
    readonly descriptor: CheckedDescriptor,
    readonly diffId: Digest,
    /** names the layer in messages */
    readonly what: string,
  ) {}

  /** Where the blob came from: a push to the same registry can mount it from there. */
  get origin(): { registry: string; repository: string } {
    return { registry: this.spool.client.registry, repository: this.spool.client.repository };
  }

  /** Download the layer now, unless it was already. */
  fetch(onBytes?: (count: number) => void): Promise<Spooled> {
    return this.spool.fetch(this, onBytes);
  }

  async blob(): Promise<{ mediaType: string; digest: Digest; size: number }> {
    const { mediaType, digest, size } = this.descriptor;
    return { mediaType, digest, size };
  }

  async openBlob(): Promise<Readable> {
    const blobPath = await this.spool.blobPath(this);
    const check = new DigestingStream({ expect: this.descriptor.digest, expectSize: this.descriptor.size, what: this.what });
    return chain(openRange(blobPath, 0, this.descriptor.size), [check], describeFailure(this.what));
  }

  async openTar(): Promise<Readable> {
    const compression = layerCompression(this.descriptor.mediaType);
    if (compression === 'zstd') {
      throw new ImageFormatError(`${this.what} is zstd-compressed, which dockvm cannot read yet; convert the image with skopeo copy --dest-compress-format gzip`, {
        source: this.what,
      });
    }
    const spooled = await this.fetch();
    const checkTar = () => new DigestingStream({ expect: this.diffId, what: `${this.what} (uncompressed)` });
    // A spooled tar was checked against the diff_id as it was written (and a cached one, again, by this
    // process when it first used it: tar-cache.ts).
    if (spooled.tar) return chain(openRange(spooled.tar.path, 0, spooled.tar.size), [], describeFailure(this.what));
    const checkBlob = new DigestingStream({ expect: this.descriptor.digest, expectSize: this.descriptor.size, what: this.what });
    const source = openRange(spooled.blobPath ?? (await this.spool.blobPath(this)), 0, this.descriptor.size);
    if (compression === 'none') return chain(source, [checkBlob, checkTar()], describeFailure(this.what));
    return chain(source, [checkBlob, createGunzip(), checkTar()], describeFailure(this.what));
  }

  /**
   * For an archive writer: the tar's size (as the blob's gzip trailer states it) and a stream of it as it
   * downloads, when this is the layer reserved for that and the registry answers a Range request; once.
   */
  async streamedTar(): Promise<{ size: number; open: () => Promise<Readable> } | undefined> {
    if (!this.spool.takeReservation(this)) return undefined;
    // In dockvm's cache already: read from there.
    if (await cachedTar(this.diffId)) return undefined;
    const client = this.spool.client;
    const size = await predictTarSize(client, this.descriptor);
    if (size === undefined) return undefined;
    const onBytes = this.spool.onBytes;
    return { size, open: async () => openLiveTar(client, this.descriptor, this.diffId, size, this.what, onBytes) };
  }

  async localTar(): Promise<{ path: string; offset: number; size: number } | undefined> {
    const compression = layerCompression(this.descriptor.mediaType);
    if (compression === 'zstd') return undefined;
    const spooled = await this.fetch();
    if (spooled.tar) return { path: spooled.tar.path, offset: 0, size: spooled.tar.size };
    return compression === 'none' && spooled.blobPath ? { path: spooled.blobPath, offset: 0, size: this.descriptor.size } : undefined;
  }
}

/** Download layers, `concurrency` at a time; the first failure stops new downloads and is thrown. */
async function fetchAll(layers: readonly RegistryLayer[], options: FetchOptions): Promise<void> {
  const queue = [...layers];
  let failure: unknown;
  const worker = async () => {
    while (failure === undefined) {
      const layer = queue.shift();
      if (!layer) return;
      try {
        await layer.fetch(options.onBytes);
      } catch (err) {
        failure ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, options.concurrency ?? 3) }, worker));
  if (failure !== undefined) throw failure;
}

function uniqueBy<T>(items: readonly T[], key: (item: T) => string): T[] {
  const seen = new Set<string>();
  return items.filter((item) => !seen.has(key(item)) && (seen.add(key(item)), true));
}

/** Whether an image came from a registry (and so can fetch its layers in parallel, or be mounted from). */
export function isRegistryImage(image: unknown): image is RegistryImage {
  return typeof (image as RegistryImage | undefined)?.fetchLayers === 'function' && (image as RegistryImage).manifest !== undefined;
}
