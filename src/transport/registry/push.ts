// Pushing an image to a registry: every layer and the config (blobs the repository has are skipped,
// blobs of another repository of the same registry are mounted), a bounded number at a time, then the
// manifest. Compressed layers go as they are (their digests kept); uncompressed ones are gzipped on the
// way, deterministically (layer-gzip.ts: igzip, else zlib on every core; what they gzip to is remembered,
// to skip them next time). An
// image read from a registry keeps its manifest bytes, so the pushed manifest has the digest it had there.
// Several platforms' images go as one index: each manifest pushed by its digest, then the index.
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { DigestMismatchError, ImageReferenceError, RegistryError } from '../../errors.js';
import type { Platform } from '../../image/config.js';
import { sha256, type Digest } from '../../image/digest.js';
import { distinctLayers, type Image, type Layer } from '../../image/image.js';
import { MediaType, layerCompression } from '../../image/media-types.js';
import { parseImageReference, type ImageReference } from '../../image/reference.js';
import { chain, describeFailure } from '../streams.js';
import { StoredLayer } from '../stored-layer.js';
import { RegistryClient, discard, type RegistryOptions } from './client.js';
import { isRegistryImage, RegistryLayer } from './registry-image.js';
import { rememberGzip, rememberedGzip } from './gzip-cache.js';
import { layerGzip } from './layer-gzip.js';
import { ensureBlob, hasBlob, uploadStream, type BlobStatus } from './upload.js';

export interface PushOptions extends RegistryOptions {
  /** blobs uploaded at once (default 3) */
  concurrency?: number;
  /** progress: the total source bytes once, then counts as they are read (negative when an upload starts over) */
  onProgress?: (event: { total: number } | { bytes: number }) => void;
}

export interface PushedBlob {
  mediaType: string;
  digest: Digest;
  size: number;
  status: BlobStatus;
}

/** What a push put at a reference: a manifest, or an index of them. */
interface PushedReference {
  /** docker://HOST/REPO:TAG (or @DIGEST) as pushed */
  reference: string;
  registry: string;
  repository: string;
  tag?: string;
  /** the manifest's (or index's) digest: what to pin */
  digest: Digest;
  mediaType: string;
  size: number;
}

export interface PushResult extends PushedReference {
  config: PushedBlob;
  layers: PushedBlob[];
}

type Format = 'docker' | 'oci';

export async function pushImage(image: Image, destination: string | ImageReference, options: PushOptions = {}): Promise<PushResult> {
  const ref = registryDestination(destination);
  const client = new RegistryClient(ref.registry!, ref.repository!, options);
  const progress = options.onProgress;
  const sizes = await Promise.all(image.layers.map(async (layer) => (await describeBlob(layer)).size));
  progress?.({ total: sizes.reduce((a, b) => a + b, 0) + image.rawConfig.length });
  const uploaded = await uploadImage(client, image, options);
  const pushed = await putAtReference(client, ref, uploaded.manifest, "the image's manifest");
  return { ...pushed, config: uploaded.config, layers: uploaded.layers };
}

export interface PushIndexResult extends PushedReference {
  /** each image's manifest, pushed by its digest, in the order given */
  manifests: (Omit<PushResult, 'reference' | 'tag'> & { platform: Platform })[];
}

/**
 * Push several platforms' images as one index: every image's blobs and manifest (by its digest), then
 * the index naming them, each with its config's platform, at the tag. A Docker manifest list when every
 * manifest is Docker's (what skopeo and Docker push), else an OCI index.
 */
export async function pushIndex(images: readonly Image[], destination: string | ImageReference, options: PushOptions = {}): Promise<PushIndexResult> {
  const ref = registryDestination(destination);
  const client = new RegistryClient(ref.registry!, ref.repository!, options);
  const progress = options.onProgress;
  const sizes = await Promise.all(images.flatMap((image) => image.layers.map(async (layer) => (await describeBlob(layer)).size)));
  progress?.({ total: sizes.reduce((a, b) => a + b, 0) + images.reduce((sum, image) => sum + image.rawConfig.length, 0) });
  const manifests: PushIndexResult['manifests'] = [];
  // one image at a time: a layer two platforms share (a scratch COPY) is uploaded once, then found
  for (const image of images) {
    const uploaded = await uploadImage(client, image, options);
    const digest = sha256(uploaded.manifest.bytes);
    await putManifest(client, digest, uploaded.manifest, digest);
    const { os, architecture, variant } = image.config;
    manifests.push({
      registry: client.registry,
      repository: client.repository,
      digest,
      mediaType: uploaded.manifest.mediaType,
      size: uploaded.manifest.bytes.length,
      config: uploaded.config,
      layers: uploaded.layers,
      platform: { architecture, os: os || 'linux', ...(variant ? { variant } : {}) },
    });
  }
  const mediaType = manifests.every((m) => m.mediaType === MediaType.DockerManifest) ? MediaType.DockerManifestList : MediaType.OciIndex;
  // Key order as Docker and skopeo write it.
  const index = {
    schemaVersion: 2,
    mediaType,
    manifests: manifests.map((m) => ({ mediaType: m.mediaType, size: m.size, digest: m.digest, platform: m.platform })),
  };
  const pushed = await putAtReference(client, ref, { bytes: Buffer.from(JSON.stringify(index)), mediaType }, 'the index');
  return { ...pushed, manifests };
}

/**
 * Put the manifest (or index) where the reference says: at its digest, which must be the bytes' own, or
 * at its tag (default latest); what was put there, as push results report it.
 */
async function putAtReference(client: RegistryClient, ref: ImageReference, manifest: { bytes: Buffer; mediaType: string }, what: string): Promise<PushedReference> {
  const digest = sha256(manifest.bytes);
  if (ref.digest !== undefined && ref.digest !== digest) {
    throw new DigestMismatchError(`${ref.text}: ${what} is ${digest}, not the digest the reference names`, { source: ref.text, digest: ref.digest });
  }
  const target = ref.digest ?? ref.tag ?? 'latest';
  await putManifest(client, target, manifest, digest);
  return {
    reference: `docker://${client.name}${ref.digest ? `@${ref.digest}` : `:${target}`}`,
    registry: client.registry,
    repository: client.repository,
    ...(ref.digest ? {} : { tag: target }),
    digest,
    mediaType: manifest.mediaType,
    size: manifest.bytes.length,
  };
}

function registryDestination(destination: string | ImageReference): ImageReference {
  const ref = typeof destination === 'string' ? parseImageReference(destination) : destination;
  if (ref.transport !== 'docker' || !ref.registry || !ref.repository) {
    throw new ImageReferenceError(`${ref.text}: push needs a registry reference, docker://HOST/REPO:TAG`, { source: ref.text });
  }
  return ref;
}

/** Every layer and the config of `image` in the repository (a bounded number at a time); its manifest, not yet put. */
async function uploadImage(client: RegistryClient, image: Image, options: PushOptions): Promise<{ manifest: { bytes: Buffer; mediaType: string }; config: PushedBlob; layers: PushedBlob[] }> {
  const format = manifestFormat(image);
  const progress = options.onProgress;
  // Each distinct layer once; the same layer twice in an image is one blob.
  const pushed = new Map<Digest, PushedBlob>();
  const jobs: (() => Promise<void>)[] = distinctLayers(image.layers).map((layer) => async () => {
    pushed.set(layer.diffId, await pushLayer(client, layer, format, progress));
  });
  let config: PushedBlob | undefined;
  jobs.push(async () => {
    const blob = { digest: image.configDigest, size: image.rawConfig.length };
    const status = await ensureBlob(client, blob, async () => counting(Readable.from([image.rawConfig]), progress));
    if (status !== 'uploaded') progress?.({ bytes: blob.size });
    config = { mediaType: format === 'oci' ? MediaType.OciConfig : MediaType.DockerConfig, ...blob, status };
  });
  await bounded(jobs, options.concurrency ?? 3);
  const layers = image.layers.map((layer) => pushed.get(layer.diffId)!);
  return { manifest: manifestBytes(image, format, config!, layers), config: config!, layers };
}

/** PUT a manifest (or index) at a tag or digest; the registry must store it under the digest its bytes have. */
async function putManifest(client: RegistryClient, target: string, manifest: { bytes: Buffer; mediaType: string }, digest: Digest): Promise<void> {
  const response = await client.request('PUT', `/v2/${client.repository}/manifests/${target}`, {
    scopes: [client.pushScope()],
    headers: { 'content-type': manifest.mediaType },
    body: manifest.bytes,
    expect: [201],
    what: `manifest ${target}`,
  });
  await discard(response);
  const claimed = response.headers.get('docker-content-digest');
  if (claimed && claimed !== digest) {
    throw new RegistryError(`${client.name}: the registry stored the manifest as ${claimed}, but its bytes hash to ${digest}`, { source: client.name });
  }
}

/**
 * The layer's blob without reading it where that can be: an uncompressed layer of a local archive is its
 * tar, whose digest is the diff_id (checked as it is read for the upload). Else blob(), which may hash it
 * first (and checks it: what inspect relies on).
 */
async function describeBlob(layer: Layer): Promise<{ mediaType: string; digest: Digest; size: number }> {
  if (layer instanceof StoredLayer && (await layer.compression()) === 'none') {
    return { mediaType: MediaType.DockerLayer, digest: layer.diffId, size: (await layer.range()).size };
  }
  return layer.blob();
}

async function pushLayer(client: RegistryClient, layer: Layer, format: Format, progress: PushOptions['onProgress']): Promise<PushedBlob> {
  const blob = await describeBlob(layer);
  const compression = layerCompression(blob.mediaType);
  if (compression === 'none') {
    const mediaType = format === 'oci' ? MediaType.OciLayerGzip : MediaType.DockerLayerGzip;
    const gzip = await layerGzip();
    const remembered = await rememberedGzip(gzip.id, layer.diffId);
    if (remembered && (await hasBlob(client, remembered.digest))) {
      progress?.({ bytes: blob.size });
      return { mediaType, ...remembered, status: 'exists' };
    }
    // The compressed digest is known only after compressing: stream it, then name it.
    const uploaded = await uploadStream(
      client,
      async () => chain(counting(await layer.openTar(), progress), [gzip.create()], describeFailure(`layer ${layer.diffId}`)),
      `layer ${layer.diffId}`,
    );
    await rememberGzip(gzip.id, layer.diffId, uploaded);
    return { mediaType, ...uploaded, status: 'uploaded' };
  }
  const mountFrom = layer instanceof RegistryLayer && layer.origin.registry === client.registry && layer.origin.repository !== client.repository ? layer.origin.repository : undefined;
  const status = await ensureBlob(client, blob, async () => counting(await layer.openBlob(), progress), mountFrom !== undefined ? { mountFrom } : {});
  if (status !== 'uploaded') progress?.({ bytes: blob.size });
  return { mediaType: layerMediaType(blob.mediaType, compression, format), digest: blob.digest, size: blob.size, status };
}

/** OCI when a layer is OCI-typed or zstd (Docker's types have no zstd); else Docker v2 schema 2, as skopeo writes. */
function manifestFormat(image: Image): Format {
  if (isRegistryImage(image)) return image.manifest.mediaType === MediaType.OciManifest ? 'oci' : 'docker';
  return 'docker';
}

function layerMediaType(source: string, compression: 'gzip' | 'zstd', format: Format): string {
  if (format === 'oci') return compression === 'zstd' ? MediaType.OciLayerZstd : MediaType.OciLayerGzip;
  if (compression === 'zstd') return MediaType.OciLayerZstd;
  return source === MediaType.DockerForeignLayerGzip ? source : MediaType.DockerLayerGzip;
}

function manifestBytes(image: Image, format: Format, config: PushedBlob, layers: PushedBlob[]): { bytes: Buffer; mediaType: string } {
  // An image from a registry whose blobs went as they were keeps its manifest bytes (and so its digest).
  if (isRegistryImage(image)) return { bytes: image.manifest.bytes, mediaType: image.manifest.mediaType };
  const mediaType = format === 'oci' ? MediaType.OciManifest : MediaType.DockerManifest;
  const descriptor = ({ mediaType: type, size, digest }: PushedBlob) => ({ mediaType: type, size, digest });
  // Key order as Docker and skopeo write it.
  const manifest = { schemaVersion: 2, mediaType, config: descriptor(config), layers: layers.map(descriptor) };
  return { bytes: Buffer.from(JSON.stringify(manifest)), mediaType };
}

/** Run jobs, `limit` at a time; the first failure stops new jobs and is thrown once the running ones end. */
async function bounded(jobs: (() => Promise<void>)[], limit: number): Promise<void> {
  const queue = [...jobs];
  let failure: { err: unknown } | undefined;
  const worker = async () => {
    while (!failure) {
      const job = queue.shift();
      if (!job) return;
      try {
        await job();
      } catch (err) {
        failure ??= { err };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, limit) }, worker));
  if (failure) throw failure.err;
}

/** Report the bytes that flow through `stream`; when it is opened again for a retry, the earlier count is taken back. */
function counting(stream: Readable, progress: PushOptions['onProgress']): Readable {
  if (!progress) return stream;
  let seen = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) {
      seen += chunk.length;
      progress({ bytes: chunk.length });
      callback(null, chunk);
    },
  });
  counter.on('close', () => {
    if (!counter.writableFinished && seen > 0) progress({ bytes: -seen });
  });
  return chain(stream, [counter], describeFailure('upload'));
}
