// Digests: "sha256:<64 hex>". Computed while streaming, never by re-reading.
import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { DigestMismatchError } from '../errors.js';

export type Digest = `sha256:${string}`;

const DIGEST_RE = /^sha256:[a-f0-9]{64}$/;

export function isDigest(value: string): value is Digest {
  return DIGEST_RE.test(value);
}

export function parseDigest(value: string, what: string): Digest {
  if (!isDigest(value)) throw new DigestMismatchError(`${what}: "${value}" is not a sha256 digest (sha256:<64 hex digits>)`);
  return value;
}

export function sha256(data: Buffer | string): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** The 64 hex digits of a digest. */
export function hex(digest: Digest): string {
  return digest.slice('sha256:'.length);
}

/**
 * A pass-through that hashes and counts what flows through it. With `expect`, it fails the stream with a
 * DigestMismatchError (naming `what` and both digests) at the end if the bytes do not match.
 */
export class DigestingStream extends Transform {
  readonly #hash: Hash = createHash('sha256');
  #size = 0;
  #digest: Digest | undefined;

  constructor(readonly options: { expect?: Digest | undefined; expectSize?: number | undefined; what?: string } = {}) {
    super({ highWaterMark: 1024 * 1024 });
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#hash.update(chunk);
    this.#size += chunk.length;
    callback(null, chunk);
  }

  override _flush(callback: TransformCallback): void {
    this.#digest = `sha256:${this.#hash.digest('hex')}`;
    const { expect, expectSize, what = 'blob' } = this.options;
    if (expectSize !== undefined && expectSize !== this.#size) {
      callback(new DigestMismatchError(`${what}: expected ${expectSize} bytes, got ${this.#size}`, { digest: expect }));
      return;
    }
    if (expect && expect !== this.#digest) {
      callback(
        new DigestMismatchError(`${what}: content does not match its digest: expected ${expect}, got ${this.#digest}`, {
          digest: expect,
        }),
      );
      return;
    }
    callback();
  }

  /** Available once the stream has ended. */
  get digest(): Digest {
    if (!this.#digest) throw new Error('DigestingStream: digest read before the end of the stream');
    return this.#digest;
  }

  get size(): number {
    return this.#size;
  }
}
