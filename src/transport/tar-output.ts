// A TarWriter for archives built from streams that may fail mid-way (a layer whose digest turns out
// wrong). The first failure surfaces, once, on `stream`, and stops the writer.
import { PassThrough, type Readable } from 'node:stream';
import { DockvmError } from '../errors.js';
import { TarWriter, type TarEntry } from '../layer/tar.js';

export class TarOutput {
  readonly #writer = new TarWriter();
  readonly stream = new PassThrough({ highWaterMark: 256 * 1024 });
  #failed = false;
  /** entry bodies still being read: when the output goes away, they stop (a download, a decompressor) */
  readonly #sources = new Set<Readable>();

  constructor() {
    this.#writer.stream.on('error', (err) => this.fail(err));
    this.#writer.stream.pipe(this.stream);
    this.stream.once('close', () => {
      for (const source of this.#sources) source.destroy();
      this.#sources.clear();
    });
  }

  /** Fail the output with `err` (the first failure wins). */
  fail(err: unknown): void {
    if (this.#failed) return;
    this.#failed = true;
    this.stream.destroy(err instanceof Error ? err : new DockvmError(String(err)));
    this.#writer.destroy(err instanceof Error ? err : new DockvmError(String(err)));
  }

  async add(entry: TarEntry, data: Buffer): Promise<void> {
    await this.#writer.add(entry, data);
  }

  /** Add an entry whose content is streamed; a failure of `source` fails the whole output. */
  async addStream(entry: TarEntry, source: Readable): Promise<void> {
    const body = new PassThrough();
    source.on('error', (err) => {
      this.fail(err);
      body.destroy();
    });
    if (this.stream.destroyed) source.destroy();
    else this.#sources.add(source);
    source.once('close', () => this.#sources.delete(source));
    source.pipe(body);
    await this.#writer.add(entry, body);
  }

  finish(): void {
    this.#writer.finish();
  }
}
