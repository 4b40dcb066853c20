// A layer's tar straight from the registry, for a docker-archive being written. The archive needs each
// entry's size before its bytes, and a gzip blob states its uncompressed size in its last four bytes
// (ISIZE: the size, mod 2^32, of its last member). Asked for with a Range request, that size lets pull
// write the layer into the archive while it downloads, hashing the archive on the way, instead of
// spooling the tar to a file and copying it in afterwards (the Debian fixture: a third of a second).
// A size that turns out wrong (a multi-member gzip, a layer of 4 GiB or more), or a download that has to
// start over from byte 0, fails the stream with StreamingAbandoned: pull then writes the archive again
// the spooled way. Every check of the spooled way holds here too, before the stream ends: the blob's
// digest, the diff_id, and the size.
import { PassThrough, Transform, type Readable, type TransformCallback } from 'node:stream';
import { DockvmError } from '../../errors.js';
import { DigestingStream, type Digest } from '../../image/digest.js';
import type { CheckedDescriptor } from '../schemas.js';
import { chain, chunkedGunzip, describeFailure, drained } from '../streams.js';
import { discard, type RegistryClient } from './client.js';
import { downloadBlob, type BlobSink } from './download.js';

/** The live stream cannot go on as it began; the archive is to be written from spooled layers instead. */
export class StreamingAbandoned extends DockvmError {}

/** Smallest gzip file: a 10-byte header, an empty deflate block, an 8-byte trailer. */
const GZIP_MIN = 20;

/**
 * The uncompressed size a gzip blob states, or undefined when the registry does not answer the Range
 * request with those bytes, or they cannot be a tar's size (tars are whole 512-byte blocks).
 */
export async function predictTarSize(client: RegistryClient, descriptor: CheckedDescriptor): Promise<number | undefined> {
  if (descriptor.size < GZIP_MIN) return undefined;
  const first = descriptor.size - 4;
  let response: Response;
  try {
    response = await client.request('GET', `/v2/${client.repository}/blobs/${descriptor.digest}`, {
      headers: { range: `bytes=${first}-${descriptor.size - 1}` },
      expect: [200, 206, 416],
      what: `blob ${descriptor.digest} (its last 4 bytes)`,
    });
  } catch {
    // Refused (a CDN that will not do ranges, a 403) or unreachable: the spooled way says what is wrong, if anything.
    return undefined;
  }
  if (response.status !== 206 || !new RegExp(`^bytes ${first}-`).test(response.headers.get('content-range') ?? '')) {
    await discard(response);
    return undefined;
  }
  const tail = Buffer.from(await response.arrayBuffer());
  if (tail.length !== 4) return undefined;
  const size = tail.readUInt32LE(0);
  return size >= 1024 && size % 512 === 0 ? size : undefined;
}

/**
 * The layer's tar, gunzipped while it downloads, and checked on the way: the blob's digest (before the
 * stream can end), the diff_id, and that it is exactly `size` bytes (StreamingAbandoned otherwise).
 */
export function openLiveTar(
  client: RegistryClient,
  descriptor: CheckedDescriptor,
  diffId: Digest,
  size: number,
  what: string,
  onBytes?: (count: number) => void,
): Readable {
  const input = new PassThrough({ highWaterMark: 4 * 1024 * 1024 });
  const checkTar = new DigestingStream({ expect: diffId, what: `${what} (uncompressed)` });
  const output = chain(input, [...chunkedGunzip(), new ExactSize(size, what), checkTar], describeFailure(what));
  const sink: BlobSink = {
    write: (chunk) => {
      if (input.destroyed) return Promise.reject(new StreamingAbandoned(`${what}: the archive stopped reading the layer`));
      return input.write(chunk) ? Promise.resolve() : drained(input);
    },
    restart: () => Promise.reject(new StreamingAbandoned(`${what}: the download had to start over from its first byte`)),
  };
  // The input ends only once the download has checked the blob's digest: a wrong byte fails the stream
  // before the archive can take it as whole.
  downloadBlob(client, descriptor, sink, onBytes ? { onBytes } : {}).then(
    () => input.end(),
    (err: unknown) => input.destroy(err instanceof Error ? err : new DockvmError(String(err))),
  );
  return output;
}

/** Passes exactly `size` bytes, and fails with StreamingAbandoned on one byte more or less. */
class ExactSize extends Transform {
  #seen = 0;

  constructor(
    readonly size: number,
    readonly what: string,
  ) {
    super({ highWaterMark: 1024 * 1024 });
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#seen += chunk.length;
    if (this.#seen > this.size) callback(this.#mismatch());
    else callback(null, chunk);
  }

  override _flush(callback: TransformCallback): void {
    callback(this.#seen === this.size ? null : this.#mismatch());
  }

  #mismatch(): StreamingAbandoned {
    return new StreamingAbandoned(`${this.what}: the tar is not the ${this.size} bytes its gzip trailer states`);
  }
}
