// Pushing an image named the way every IMAGE argument is (a path, docker-archive:, oci:, oci-archive:,
// docker://…) to a registry: what `dockvm push` and `refresh --push` do. A registry source gets the same
// TLS setting, and the credentials only when it is the same registry (else its own auth file entry).
// An OCI layout (or archive) whose ref names an image index is pushed as an index, every platform's
// manifest first (a registry's index is copied as the one image of this host's platform, as before).
import { UsageError } from '../errors.js';
import { parseImageReference, type ImageReference } from '../image/reference.js';
import { openImage, openIndex } from './open.js';
import { openRegistryImage } from './registry/registry-image.js';
import { pushImage, pushIndex, type PushIndexResult, type PushOptions, type PushResult } from './registry/push.js';
import { registryOptions } from './registry/registry-options.js';

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
  const image = sourceRef
    ? await openRegistryImage(sourceRef, { ...shared, ...(creds !== undefined && sourceRef.registry === target.registry ? { creds } : {}), spoolTars: false })
    : await openImage(source);
  try {
    return await pushImage(image, target, options);
  } finally {
    await image.close();
  }
}
