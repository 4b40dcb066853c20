// Spooling a downloading blob to local files, so that its layer can be opened again and again: the blob
// as it is, and (for a gzip layer) its uncompressed tar, decompressed and checked against the diff_id
// while the download runs, so that archive writers can read the tar in place.
import { createWriteStream } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { PassThrough } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { DigestingStream, type Digest } from '../../image/digest.js';
import { describeFailure } from '../streams.js';
import type { BlobSink } from './download.js';

export interface TarSpool {
  path: string;
  diffId: Digest;
  /** names the layer in messages */
  what: string;
}

/** Writes the blob to `blobPath` and, with `tar`, its gunzipped bytes to `tar.path` (verified against the diff_id). */
export class SpoolSink implements BlobSink {
  #file: FileHandle;
  #tar: { input: PassThrough; done: Promise<void>; failure?: unknown } | undefined;

  private constructor(
    file: FileHandle,
    readonly blobPath: string,
    readonly tar: TarSpool | undefined,
  ) {
    this.#file = file;
    this.#tar = tar ? startTar(tar) : undefined;
  }

  static async create(blobPath: string, tar?: TarSpool): Promise<SpoolSink> {
    return new SpoolSink(await open(blobPath, 'w'), blobPath, tar);
  }

  async write(chunk: Buffer): Promise<void> {
    const tar = this.#tar;
    // Feed the decompressor first (it works on the thread pool) and write the file while it runs.
    const fed = tar && tar.failure === undefined ? feed(tar, chunk) : undefined;
    await this.#file.write(chunk);
    await fed;
  }

  async restart(): Promise<void> {
    await this.#file.truncate(0);
    await this.#file.close();
    this.#file = await open(this.blobPath, 'w');
    if (this.#tar) {
      this.#tar.input.destroy();
      await this.#tar.done.catch(() => undefined);
      this.#tar = startTar(this.tar!);
    }
  }

  /** Close the files; the tar's diff_id is checked here (after the blob's digest was, by the download). */
  async finish(): Promise<void> {
    await this.#file.close();
    if (this.#tar) {
      this.#tar.input.end();
      await this.#tar.done;
    }
  }

  /** Close everything after a failure (the caller removes the files). */
  async abort(): Promise<void> {
    await this.#file.close().catch(() => undefined);
    if (this.#tar) {
      this.#tar.input.destroy();
      await this.#tar.done.catch(() => undefined);
    }
  }
}

function startTar(spec: TarSpool): { input: PassThrough; done: Promise<void>; failure?: unknown } {
  const input = new PassThrough({ highWaterMark: 1024 * 1024 });
  const state: { input: PassThrough; done: Promise<void>; failure?: unknown } = { input, done: Promise.resolve() };
  const check = new DigestingStream({ expect: spec.diffId, what: `${spec.what} (uncompressed)` });
  state.done = pipeline(input, createGunzip({ chunkSize: 256 * 1024 }), check, createWriteStream(spec.path)).catch((err: unknown) => {
    state.failure = err;
    throw describeFailure(spec.what)(err);
  });
  // Until finish() awaits it, a failure is only recorded (the blob's digest check speaks first).
  state.done.catch(() => undefined);
  return state;
}

/** Write with backpressure; a failed pipeline stops taking bytes instead of blocking the download. */
async function feed(tar: { input: PassThrough; done: Promise<void>; failure?: unknown }, chunk: Buffer): Promise<void> {
  if (tar.input.write(chunk)) return;
  await new Promise<void>((resolve) => {
    const settle = () => {
      tar.input.off('drain', settle);
      tar.input.off('close', settle);
      resolve();
    };
    tar.input.on('drain', settle);
    tar.input.on('close', settle);
    tar.done.catch(settle);
  });
}
