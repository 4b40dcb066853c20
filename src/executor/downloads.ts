// ADD URL: each download fetched on the host (the build VM may have no network), into the build's temp
// dir, checked against --checksum, with the server's Last-Modified as its mtime (Docker's rule).
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import type { UrlSource } from '../plan/plan.js';
import { BuildStepError } from './errors.js';

export interface Download {
  path: string;
  size: number;
  /** seconds since the epoch: Last-Modified, else 0 */
  mtime: number;
  /** "sha256:…" of the content */
  digest: string;
}

export async function download(url: UrlSource, dir: string, index: number): Promise<Download> {
  let response: Response;
  try {
    response = await fetch(url.url, { redirect: 'follow' });
  } catch (err) {
    throw new BuildStepError(`cannot download ${url.url} (${(err as Error).message})`, { cause: err });
  }
  if (!response.ok || !response.body) throw new BuildStepError(`cannot download ${url.url}: the server answered ${response.status} ${response.statusText}`);
  const algorithm = url.checksum ? url.checksum.slice(0, url.checksum.indexOf(':')) : 'sha256';
  const hash = createHash(algorithm);
  const sha = createHash('sha256');
  let size = 0;
  const path = join(dir, `download-${index}`);
  const count = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      hash.update(chunk);
      if (algorithm !== 'sha256') sha.update(chunk);
      size += chunk.length;
      done(null, chunk);
    },
  });
  await pipeline(Readable.fromWeb(response.body as WebReadableStream<Uint8Array>), count, createWriteStream(path, { mode: 0o600 }));
  const got = `${algorithm}:${hash.digest('hex')}`;
  if (url.checksum && got !== url.checksum) {
    throw new BuildStepError(`the download of ${url.url} does not match --checksum: expected ${url.checksum}, got ${got}`);
  }
  const lastModified = Date.parse(response.headers.get('last-modified') ?? '');
  return {
    path,
    size,
    mtime: Number.isNaN(lastModified) ? 0 : Math.floor(lastModified / 1000),
    digest: algorithm === 'sha256' ? got : `sha256:${sha.digest('hex')}`,
  };
}
