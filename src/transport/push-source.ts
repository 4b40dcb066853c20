// Pushing an image named the way every IMAGE argument is (a path, docker-archive:, oci:, oci-archive:,
// docker://…) to a registry: what `dockvm push` and `refresh --push` do. A registry source gets the same
// TLS setting, and the credentials only when it is the same registry (else its own auth file entry).
// An OCI layout (or archive) whose ref names an image index, or a registry tag that names one, is
// pushed as an index: every platform's image and manifest first (attestations left out), then the index.
import { UsageError } from '../errors.js';
import { parseImageReference, type ImageReference } from '../image/reference.js';
import { openImage, openIndex } from './open.js';
import { openRegistryImage } from './registry/registry-image.js';
import { pushImage, pushIndex, type PushIndexResult, type PushOptions, type PushResult } from './registry/push.js';
import { registryOptions } from './registry/registry-options.js';
import { RegistryClient, type RegistryOptions } from './registry/client.js';
import { describeReference, fetchManifest } from './registry/manifest.js';
import { check, indexSchema } from './schemas.js';
import { isIndex } from '../image/media-types.js';
import type { Platform } from '../image/config.js';
import type { OpenedImage } from './opened-image.js';

export async function pushSource(source: string, destination: string | ImageReference, options: PushOptions = {}): Promise<PushResult | PushIndexResult> {
  const target = typeof destination === 'string' ? parseImageReference(destination) : destination;
  if (target.digest !== undefined && target.tag !== undefined) throw new UsageError(`${target.text}: push to a tag or to a digest, not both`);
  const sourceRef = source.startsWith('docker://') ? parseImageReference(source) : undefined;
  const { creds, ...shared } = registryOptions(options);
  // an OCI layout's multi-platform index goes as an index, with every platform's manifest
  const index = sourceRef ? undefined : await openIndex(source);
  if (index) {
    try {
      return await pushIndex(index.images.map((entry) => entry.image), target, options);
    } finally {
      await index.close();
    }
  }
  const sourceOptions = sourceRef ? { ...shared, ...(creds !== undefined && sourceRef.registry === target.registry ? { creds } : {}), spoolTars: false } : {};
  const platforms = sourceRef ? await indexPlatforms(sourceRef, sourceOptions) : undefined;
  if (sourceRef && platforms) {
    const images: OpenedImage[] = [];
    try {
      for (const platform of platforms) images.push(await openRegistryImage(sourceRef, { ...sourceOptions, platform }));
      return await pushIndex(images, target, options);
    } finally {
      await Promise.all(images.map((image) => image.close()));
    }
  }
  const image = sourceRef ? await openRegistryImage(sourceRef, sourceOptions) : await openImage(source);
  try {
    return await pushImage(image, target, options);
  } finally {
    await image.close();
  }
}

/** The platforms of the images a registry index names (in its order; attestations left out), or undefined for a single image. */
async function indexPlatforms(ref: ImageReference, options: RegistryOptions): Promise<Platform[] | undefined> {
  const client = new RegistryClient(ref.registry!, ref.repository!, options);
  const top = await fetchManifest(client, ref.digest ?? ref.tag ?? 'latest');
  if (!isIndex(top.mediaType)) return undefined;
  const index = check(indexSchema, JSON.parse(top.bytes.toString('utf8')), `${describeReference(client, ref.digest ?? ref.tag ?? 'latest')}: index`);
  return index.manifests.flatMap((entry) =>
    entry.platform && entry.platform.os !== 'unknown' ? [{ os: entry.platform.os, architecture: entry.platform.architecture, ...(entry.platform.variant ? { variant: entry.platform.variant } : {}) }] : [],
  );
}
