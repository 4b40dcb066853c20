// Manifests from a registry: Docker v2 schema 2 and OCI manifests and indexes, fetched with an Accept
// header naming all four, checked against Docker-Content-Digest and, when fetched by digest, against
// that digest. An index is resolved to the manifest of one platform.
import { DigestMismatchError, ImageFormatError, RegistryError } from '../../errors.js';
import { isDigest, sha256, type Digest } from '../../image/digest.js';
import { MediaType, isIndex } from '../../image/media-types.js';
import { check, indexSchema, manifestSchema, type CheckedDescriptor } from '../schemas.js';
import type { RegistryClient } from './client.js';
import { choosePlatform, formatPlatform, offeredPlatforms, type PlatformChoice } from './platform.js';

export const MANIFEST_ACCEPT = [MediaType.OciIndex, MediaType.DockerManifestList, MediaType.OciManifest, MediaType.DockerManifest].join(', ');

/** Registries cap manifests at a few MB (containerd: 4 MiB); a larger one is refused. */
const MANIFEST_LIMIT = 4 * 1024 * 1024;

export interface FetchedManifest {
  bytes: Buffer;
  mediaType: string;
  digest: Digest;
}

export interface ResolvedManifest {
  /** the image manifest chosen (the platform's, when the reference named an index) */
  manifest: FetchedManifest;
  config: CheckedDescriptor;
  layers: CheckedDescriptor[];
  /** the digest the reference resolved to: the index's when it named one (what a tag points at) */
  referenceDigest: Digest;
  /** the index the manifest was chosen from, when there was one */
  index?: FetchedManifest;
}

/** "tag" or "sha256:…", for messages: "127.0.0.1:5000/app:1", "…/app@sha256:…". */
export function describeReference(client: RegistryClient, reference: string): string {
  return `${client.name}${isDigest(reference) ? '@' : ':'}${reference}`;
}

/** GET a manifest by tag or digest, verified. A 404 says which tag or digest the repository lacks. */
export async function fetchManifest(client: RegistryClient, reference: string): Promise<FetchedManifest> {
  const what = describeReference(client, reference);
  const response = await client.request('GET', `/v2/${client.repository}/manifests/${reference}`, {
    headers: { accept: MANIFEST_ACCEPT },
    expect: [200, 404],
    what: `manifest ${reference}`,
  });
  if (response.status === 404) {
    const detail = await response.text().catch(() => '');
    const unknownRepo = detail.includes('NAME_UNKNOWN');
    throw new RegistryError(
      unknownRepo
        ? `${what}: the registry has no repository ${client.repository} (404): check the image name`
        : `${what}: no such ${isDigest(reference) ? 'manifest' : 'tag'} in ${client.name} (404): check the ${isDigest(reference) ? 'digest' : 'tag'}`,
      { source: what },
    );
  }
  const length = Number(response.headers.get('content-length') ?? 0);
  if (length > MANIFEST_LIMIT) throw new ImageFormatError(`${what}: the manifest is ${length} bytes, larger than ${MANIFEST_LIMIT}`, { source: what });
  const bytes = Buffer.from(await response.arrayBuffer());
  if (bytes.length > MANIFEST_LIMIT) throw new ImageFormatError(`${what}: the manifest is ${bytes.length} bytes, larger than ${MANIFEST_LIMIT}`, { source: what });
  const digest = sha256(bytes);
  if (isDigest(reference) && digest !== reference) {
    throw new DigestMismatchError(`${what}: the manifest the registry sent does not match the digest asked for: got ${digest}`, { source: what, digest: reference });
  }
  const claimed = response.headers.get('docker-content-digest');
  if (claimed && isDigest(claimed) && claimed !== digest) {
    throw new DigestMismatchError(`${what}: the manifest does not match the registry's Docker-Content-Digest ${claimed}: got ${digest}`, { source: what, digest: claimed });
  }
  const mediaType = manifestMediaType(bytes, response.headers.get('content-type'), what);
  return { bytes, mediaType, digest };
}

/** Resolve a tag or digest to its digest without downloading the manifest (HEAD; GET where HEAD tells nothing). */
export async function headManifest(client: RegistryClient, reference: string): Promise<{ digest: Digest; mediaType: string }> {
  const response = await client.request('HEAD', `/v2/${client.repository}/manifests/${reference}`, {
    headers: { accept: MANIFEST_ACCEPT },
    expect: [200, 404],
    what: `manifest ${reference}`,
  });
  const claimed = response.headers.get('docker-content-digest');
  const type = response.headers.get('content-type')?.split(';')[0]?.trim();
  if (response.status === 200 && claimed && isDigest(claimed) && type) {
    if (isDigest(reference) && claimed !== reference) {
      throw new DigestMismatchError(`${describeReference(client, reference)}: the registry says the manifest is ${claimed}`, { digest: reference });
    }
    return { digest: claimed, mediaType: type };
  }
  const fetched = await fetchManifest(client, reference);
  return { digest: fetched.digest, mediaType: fetched.mediaType };
}

/** The document's media type: its own mediaType field when it has one, else Content-Type, else the shape. */
function manifestMediaType(bytes: Buffer, contentType: string | null, what: string): string {
  let parsed: { mediaType?: unknown; manifests?: unknown; config?: unknown; schemaVersion?: unknown };
  try {
    parsed = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new ImageFormatError(`${what}: the manifest is not valid JSON (${(err as Error).message})`, { source: what, cause: err });
  }
  if (parsed.schemaVersion === 1) {
    throw new ImageFormatError(`${what}: a Docker schema 1 manifest, which dockvm does not read; push the image again with a current client`, { source: what });
  }
  if (typeof parsed.mediaType === 'string') return parsed.mediaType;
  const type = contentType?.split(';')[0]?.trim();
  if (type && type !== 'application/json' && type !== 'application/octet-stream') return type;
  return Array.isArray(parsed.manifests) ? MediaType.OciIndex : MediaType.OciManifest;
}

/**
 * The image manifest a tag or digest names, for one platform. A manifest (not an index) is taken as it
 * is; its platform is checked later against the config, and only when one was asked for.
 */
export async function resolveManifest(client: RegistryClient, reference: string, wanted: PlatformChoice): Promise<ResolvedManifest> {
  const what = describeReference(client, reference);
  const top = await fetchManifest(client, reference);
  if (!isIndex(top.mediaType)) return { ...imageManifest(top, what), manifest: top, referenceDigest: top.digest };
  const index = check(indexSchema, JSON.parse(top.bytes.toString('utf8')), `${what}: index`);
  const entry = choosePlatform(index.manifests, wanted);
  if (!entry) {
    const offered = offeredPlatforms(index.manifests);
    throw new RegistryError(
      `${what} has no image for ${formatPlatform(wanted)}${offered.length ? ` (it has ${offered.join(', ')})` : ''}: choose one with --os, --arch and --variant`,
      { source: what },
    );
  }
  const chosen = await fetchManifest(client, entry.digest);
  if (isIndex(chosen.mediaType)) throw new ImageFormatError(`${what}: the index entry for ${formatPlatform(wanted)} is another index, which dockvm does not follow`, { source: what });
  if (chosen.bytes.length !== entry.size) {
    throw new DigestMismatchError(`${what}: the manifest for ${formatPlatform(wanted)} is ${chosen.bytes.length} bytes, the index says ${entry.size}`, { digest: entry.digest });
  }
  return { ...imageManifest(chosen, `${what} (${formatPlatform(wanted)})`), manifest: chosen, referenceDigest: top.digest, index: top };
}

function imageManifest(fetched: FetchedManifest, what: string): { config: CheckedDescriptor; layers: CheckedDescriptor[] } {
  if (fetched.mediaType !== MediaType.OciManifest && fetched.mediaType !== MediaType.DockerManifest) {
    throw new ImageFormatError(`${what}: a manifest of type ${fetched.mediaType}, which is not an image manifest dockvm reads`, { source: what });
  }
  const manifest = check(manifestSchema, JSON.parse(fetched.bytes.toString('utf8')), `${what}: manifest`);
  return { config: manifest.config, layers: manifest.layers };
}
