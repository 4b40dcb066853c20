// What a tag points at now, without downloading the image: the digest a refresh compares with its lock.
import { ImageReferenceError } from '../../errors.js';
import type { Digest } from '../../image/digest.js';
import { parseImageReference, type ImageReference } from '../../image/reference.js';
import { RegistryClient, type RegistryOptions } from './client.js';
import { headManifest } from './manifest.js';

/** The manifest (or index) digest `reference` resolves to, and its media type. */
export async function resolveDigest(reference: string | ImageReference, options: RegistryOptions = {}): Promise<{ digest: Digest; mediaType: string }> {
  const ref = typeof reference === 'string' ? parseImageReference(reference) : reference;
  if (ref.transport !== 'docker' || !ref.registry || !ref.repository) {
    throw new ImageReferenceError(`${ref.text}: not a registry reference (docker://HOST/REPO:TAG)`, { source: ref.text });
  }
  const client = new RegistryClient(ref.registry, ref.repository, options);
  return headManifest(client, ref.digest ?? ref.tag ?? 'latest');
}
