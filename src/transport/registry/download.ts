// Downloading one blob: GET /v2/REPO/blobs/DIGEST, hashed while it streams, retried with backoff when
// the registry answers 5xx or the connection drops, and resumed with a Range request from the last byte
// received when the registry honours it (206); when it does not (200), the download starts over.
import { createHash } from 'node:crypto';
import { DigestMismatchError, DockvmError, RegistryError } from '../../errors.js';
import type { Digest } from '../../image/digest.js';
import { discard, type RegistryClient } from './client.js';
import { DEFAULT_RETRY, backoff, isTransientNetworkError, type RetryPolicy } from './retry.js';

/** Where the bytes go: written in order; `restart` when the download begins again from byte 0. */
export interface BlobSink {
  write(chunk: Buffer): Promise<void>;
  restart(): Promise<void>;
}

export interface DownloadOptions {
  retry?: RetryPolicy;
  /** called with each chunk's length (progress); a restart reports a negative count */
  onBytes?: (count: number) => void;
  /** the repository to read from, when not the client's (a cross-repository source) */
  repository?: string;
}

/** Download `descriptor` into `sink`; resolves once every byte arrived and the digest and size matched. */
export async function downloadBlob(client: RegistryClient, descriptor: { digest: Digest; size: number }, sink: BlobSink, options: DownloadOptions = {}): Promise<void> {
  const policy = options.retry ?? DEFAULT_RETRY;
  const repository = options.repository ?? client.repository;
  const what = `${client.registry}/${repository}: blob ${descriptor.digest}`;
  let hash = createHash('sha256');
  let received = 0;
  const startOver = async () => {
    options.onBytes?.(-received);
    hash = createHash('sha256');
    received = 0;
    await sink.restart();
  };
  // Attempts that make progress do not count against the limit: a flaky link that keeps delivering finishes.
  let failures = 0;
  for (;;) {
    try {
      const response = await client.request('GET', `/v2/${repository}/blobs/${descriptor.digest}`, {
        scopes: [client.pullScope(repository)],
        headers: received > 0 ? { range: `bytes=${received}-` } : {},
        expect: [200, 206, 404, 416],
        what: `blob ${descriptor.digest}`,
      });
      if (response.status === 404) {
        await discard(response);
        throw new RegistryError(`${what}: the registry does not have this blob (404), though the manifest names it`, { source: what, digest: descriptor.digest });
      }
      if (response.status === 416 || (response.status === 206 && !rangeStartsAt(response, received))) {
        // The range was refused or is not the one asked for: fetch the whole blob again.
        await discard(response);
        await startOver();
        continue;
      }
      if (response.status === 200 && received > 0) await startOver();
      const before = received;
      try {
        for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
          const buffer = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
          if (received + buffer.length > descriptor.size) {
            throw new DigestMismatchError(`${what}: the registry sent more than the ${descriptor.size} bytes the manifest says`, { digest: descriptor.digest });
          }
          hash.update(buffer);
          await sink.write(buffer);
          received += buffer.length;
          options.onBytes?.(buffer.length);
        }
      } catch (err) {
        if (received > before) failures = 0;
        throw err;
      }
      if (received < descriptor.size) {
        if (received > before) failures = 0;
        throw Object.assign(new Error(`${what}: the body ended after ${received} of ${descriptor.size} bytes`), { code: 'ECONNRESET' });
      }
      break;
    } catch (err) {
      // A 5xx was already retried by the client; here, dropped connections and short bodies are.
      if (!isTransientNetworkError(err) || ++failures >= policy.attempts) {
        // Ours (a digest, a full disk, a stream that cannot start over) is reported as it is.
        if (err instanceof DockvmError) throw err;
        if (isTransientNetworkError(err)) {
          throw new RegistryError(`${what}: the download failed ${failures} times, last after ${received} of ${descriptor.size} bytes (${(err as Error).message}); try again`, {
            source: what,
            digest: descriptor.digest,
            cause: err,
          });
        }
        throw client.networkError(err, `GET blob ${descriptor.digest}`);
      }
      await backoff(policy, failures);
    }
  }
  const digest = `sha256:${hash.digest('hex')}`;
  if (digest !== descriptor.digest) {
    throw new DigestMismatchError(`${what}: the bytes the registry sent do not match the digest: got ${digest}`, { source: what, digest: descriptor.digest });
  }
}

/** Content-Range: bytes START-END/TOTAL must start where we asked. */
function rangeStartsAt(response: Response, start: number): boolean {
  const match = /^bytes (\d+)-/.exec(response.headers.get('content-range') ?? '');
  return match !== null && Number(match[1]) === start;
}
