// Uploading blobs (Docker Registry HTTP API v2): skip a blob the repository has (HEAD), mount it from
// another repository of the same registry, else POST an upload session and PUT the bytes with
// ?digest= (monolithic), or PATCH a stream whose digest is known only at its end and then PUT ?digest=.
// A failed upload is started over, from a new session, with backoff.
import type { Readable } from 'node:stream';
import { DigestMismatchError, RegistryError } from '../../errors.js';
import { DigestingStream, type Digest } from '../../image/digest.js';
import { chain, describeFailure } from '../streams.js';
import { RegistryHttpError, discard, type RegistryClient } from './client.js';
import { DEFAULT_RETRY, backoff, isTransientNetworkError, isTransientStatus, type RetryPolicy } from './retry.js';

export type BlobStatus = 'uploaded' | 'exists' | 'mounted';

export interface UploadOptions {
  retry?: RetryPolicy;
  /** a repository of the same registry that has the blob, to mount it from */
  mountFrom?: string;
}

/** Whether the repository already has the blob. */
export async function hasBlob(client: RegistryClient, digest: Digest): Promise<boolean> {
  const response = await client.request('HEAD', `/v2/${client.repository}/blobs/${digest}`, {
    scopes: [client.pushScope()],
    expect: [200, 404],
    what: `blob ${digest}`,
  });
  await discard(response);
  return response.status === 200;
}

/** Make sure the repository has the blob `digest` (of `size` bytes), uploading `open()`'s bytes when it has not. */
export async function ensureBlob(
  client: RegistryClient,
  blob: { digest: Digest; size: number },
  open: () => Promise<Readable>,
  options: UploadOptions = {},
): Promise<BlobStatus> {
  if (await hasBlob(client, blob.digest)) return 'exists';
  return retrying(options, async () => {
    const session = await startUpload(client, options.mountFrom !== undefined ? { digest: blob.digest, from: options.mountFrom } : undefined);
    if (session.mounted) return 'mounted';
    const source = await open();
    const check = new DigestingStream({ expect: blob.digest, expectSize: blob.size, what: `${client.name}: blob ${blob.digest}` });
    const body = joined(source, check, `blob ${blob.digest}`);
    const url = await client.url(session.location);
    url.searchParams.set('digest', blob.digest);
    const response = await client.request('PUT', url.href, {
      scopes: [client.pushScope()],
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(blob.size) },
      stream: body,
      expect: [201],
      what: `upload of blob ${blob.digest}`,
    });
    await discard(response);
    checkCreated(client, response, blob.digest);
    return 'uploaded';
  });
}

/**
 * Upload a stream whose digest is known only once it has all been read (a layer compressed on the way):
 * PATCH it to a new session, then PUT ?digest= with what was computed. Returns the digest and size.
 */
export async function uploadStream(
  client: RegistryClient,
  open: () => Promise<Readable>,
  what: string,
  options: UploadOptions = {},
): Promise<{ digest: Digest; size: number }> {
  return retrying(options, async () => {
    const session = await startUpload(client, undefined);
    const digester = new DigestingStream({ what: `${client.name}: ${what}` });
    const source = await open();
    const body = joined(source, digester, what);
    const patched = await client.request('PATCH', (await client.url(session.location)).href, {
      scopes: [client.pushScope()],
      headers: { 'content-type': 'application/octet-stream' },
      stream: body,
      expect: [202, 204],
      what: `upload of ${what}`,
    });
    await discard(patched);
    const digest = digester.digest;
    const url = await client.url(patched.headers.get('location') ?? session.location);
    url.searchParams.set('digest', digest);
    const response = await client.request('PUT', url.href, {
      scopes: [client.pushScope()],
      headers: { 'content-length': '0' },
      body: '',
      expect: [201],
      what: `upload of ${what}`,
    });
    await discard(response);
    checkCreated(client, response, digest);
    return { digest, size: digester.size };
  });
}

/** POST /v2/REPO/blobs/uploads/ (with ?mount=&from= when mounting): the session's Location, or mounted. */
async function startUpload(client: RegistryClient, mount: { digest: Digest; from: string } | undefined): Promise<{ mounted: boolean; location: string }> {
  const path = mount
    ? `/v2/${client.repository}/blobs/uploads/?mount=${encodeURIComponent(mount.digest)}&from=${encodeURIComponent(mount.from)}`
    : `/v2/${client.repository}/blobs/uploads/`;
  const response = await client.request('POST', path, {
    scopes: mount ? [client.pushScope(), client.pullScope(mount.from)] : [client.pushScope()],
    headers: { 'content-length': '0' },
    body: '',
    expect: [201, 202],
    what: mount ? `mount of blob ${mount.digest} from ${mount.from}` : 'start of an upload',
  });
  await discard(response);
  if (response.status === 201) return { mounted: true, location: '' };
  const location = response.headers.get('location');
  if (!location) throw new RegistryError(`${client.name}: the registry started an upload without saying where to send it (no Location header)`, { source: client.name });
  return { mounted: false, location };
}

function checkCreated(client: RegistryClient, response: Response, digest: Digest): void {
  const claimed = response.headers.get('docker-content-digest');
  if (claimed && claimed !== digest) {
    throw new DigestMismatchError(`${client.name}: the registry stored blob ${digest} as ${claimed}`, { source: client.name, digest });
  }
}

/** Run an upload attempt again, from a new session, while it fails with a dropped connection or a 5xx. */
async function retrying<T>(options: UploadOptions, attempt: () => Promise<T>): Promise<T> {
  const policy = options.retry ?? DEFAULT_RETRY;
  for (let tries = 1; ; tries++) {
    try {
      return await attempt();
    } catch (err) {
      const transient = (err instanceof RegistryHttpError && isTransientStatus(err.status)) || isTransientNetworkError(err) || isTransientNetworkError((err as Error)?.cause);
      if (!transient || tries >= policy.attempts) throw err;
      await backoff(policy, tries);
    }
  }
}

/**
 * `source` piped into `check`, as a request body; a failure of either ends the body with that error, and
 * a body dropped early (a failed request) destroys the source, so that nothing reads or compresses on.
 */
function joined(source: Readable, check: DigestingStream, what: string): Readable {
  return chain(source, [check], describeFailure(what));
}
