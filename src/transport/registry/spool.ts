// Spooling a downloading blob to local files, so that its layer can be opened again and again: the blob
// as it is, and/or (for a gzip layer) its uncompressed tar, decompressed and checked against the diff_id
// while the download runs, so that archive writers can read the tar in place. Writes overlap the
// download: the sink only waits when a file or the decompressor falls behind.
import { createWriteStream, type WriteStream } from 'node:fs';
import { PassThrough, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DigestingStream, type Digest } from '../../image/digest.js';
import { chunkedGunzip, describeFailure, drained } from '../streams.js';
import type { BlobSink } from './download.js';

export interface TarSpool {
  path: string;
  diffId: Digest;
  /** names the layer in messages */
  what: string;
}

interface Output {
  input: Writable;
  done: Promise<void>;
  failure?: unknown;
}

const BUFFER = 4 * 1024 * 1024;

/** Writes the blob to `blobPath` (when given) and, with `tar`, its gunzipped bytes to `tar.path` (verified against the diff_id). */
export class SpoolSink implements BlobSink {
  #blob: Output | undefined;
  #tar: Output | undefined;

  constructor(
    readonly blobPath: string | undefined,
    readonly tar: TarSpool | undefined,
  ) {
    this.#start();
  }

  #start(): void {
    this.#blob = this.blobPath !== undefined ? startFile(this.blobPath) : undefined;
    this.#tar = this.tar ? startTar(this.tar) : undefined;
  }

  async write(chunk: Buffer): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const output of [this.#blob, this.#tar]) {
      if (output && output.failure === undefined && !output.input.write(chunk)) waits.push(untilWritable(output));
    }
    if (waits.length) await Promise.all(waits);
  }

  async restart(): Promise<void> {
    await this.abort();
    this.#start();
  }

  /** Close the files; the tar's diff_id is checked here (after the blob's digest was, by the download). */
  async finish(): Promise<void> {
    for (const output of [this.#blob, this.#tar]) output?.input.end();
    for (const output of [this.#blob, this.#tar]) await output?.done;
  }

  /** Stop writing after a failure (the caller removes the files). */
  async abort(): Promise<void> {
    for (const output of [this.#blob, this.#tar]) output?.input.destroy();
    for (const output of [this.#blob, this.#tar]) await output?.done.catch(() => undefined);
  }
}

function startFile(path: string): Output {
  const input: WriteStream = createWriteStream(path, { highWaterMark: BUFFER });
  const output: Output = { input, done: Promise.resolve() };
  output.done = new Promise<void>((resolve, reject) => {
    input.once('finish', () => input.once('close', resolve));
    input.once('error', (err) => {
      output.failure = err;
      reject(describeFailure(path)(err));
    });
    input.once('close', () => {
      if (!input.writableFinished && output.failure === undefined) reject(new Error(`${path}: closed before the end`));
    });
  });
  output.done.catch(() => undefined);
  return output;
}

function startTar(spec: TarSpool): Output {
  const input = new PassThrough({ highWaterMark: BUFFER });
  const output: Output = { input, done: Promise.resolve() };
  const check = new DigestingStream({ expect: spec.diffId, what: `${spec.what} (uncompressed)` });
  output.done = pipeline(input, ...chunkedGunzip(), check, createWriteStream(spec.path, { highWaterMark: BUFFER })).catch((err: unknown) => {
    output.failure = err;
    throw describeFailure(spec.what)(err);
  });
  // Until finish() awaits it, a failure is only recorded (the blob's digest check speaks first).
  output.done.catch(() => undefined);
  return output;
}

/** Wait until `output` takes bytes again, or has failed (then it takes no more). */
function untilWritable(output: Output): Promise<void> {
  return Promise.race([drained(output.input), output.done.catch(() => undefined)]);
}
