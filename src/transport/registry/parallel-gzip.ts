// Gzip on every core, with deterministic output (the pigz / pgzip technique): the input is cut into
// fixed-size blocks; each is deflated on the thread pool with the 32 KiB before it as the dictionary and
// ends with a sync flush (the last with a finish), so the pieces join into one deflate stream; a gzip
// header with no name and mtime 0 and a trailer (CRC-32, size) frame it. The bytes depend only on the
// input, the block size and the level, never on how the input was chunked or how many threads ran.
// Used for pushing uncompressed layers, where single-threaded gzip would be the bottleneck.
import { availableParallelism } from 'node:os';
import { Transform, type TransformCallback } from 'node:stream';
import * as zlib from 'node:zlib';
import { promisify } from 'node:util';

const deflateRaw = promisify(zlib.deflateRaw) as (buffer: Buffer, options: zlib.ZlibOptions) => Promise<Buffer>;

export interface ParallelGzipOptions {
  /** zlib level (default 6, as GZIP_LEVEL for archives) */
  level?: number;
  /** input bytes per block (default 1 MiB); part of what the output depends on */
  blockSize?: number;
  /** blocks deflated at once (default: the number of cores, at least 2) */
  concurrency?: number;
}

/** Deflate's window: each block may refer this far back into the one before it. */
const WINDOW = 32 * 1024;
/** ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=3 (Unix), fixed so the header never varies by platform. */
const HEADER = Buffer.from([0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0x03]);

export class ParallelGzip extends Transform {
  readonly #level: number;
  readonly #blockSize: number;
  readonly #concurrency: number;
  #pending: Buffer[] = [];
  #pendingSize = 0;
  /** the last WINDOW bytes of input already dispatched: the next block's dictionary */
  #previousTail: Buffer | undefined;
  readonly #inFlight: Promise<Buffer>[] = [];
  #crc = 0;
  #size = 0;

  constructor(options: ParallelGzipOptions = {}) {
    super({ writableHighWaterMark: 1024 * 1024 });
    this.#level = options.level ?? 6;
    this.#blockSize = options.blockSize ?? 1024 * 1024;
    this.#concurrency = options.concurrency ?? Math.max(2, availableParallelism());
    this.push(HEADER);
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#crc = crc32(chunk, this.#crc);
    this.#size += chunk.length;
    this.#pending.push(chunk);
    this.#pendingSize += chunk.length;
    this.#dispatchFullBlocks().then(() => callback(), callback);
  }

  override _flush(callback: TransformCallback): void {
    (async () => {
      // The last block (possibly empty) finishes the deflate stream.
      this.#dispatch(this.#take(this.#pendingSize), true);
      while (this.#inFlight.length > 0) this.push(await this.#inFlight.shift()!);
      const trailer = Buffer.alloc(8);
      trailer.writeUInt32LE(this.#crc >>> 0, 0);
      trailer.writeUInt32LE(this.#size % 2 ** 32, 4);
      this.push(trailer);
    })().then(() => callback(), callback);
  }

  async #dispatchFullBlocks(): Promise<void> {
    while (this.#pendingSize >= this.#blockSize) {
      this.#dispatch(this.#take(this.#blockSize), false);
      // Bound the work in flight; emit finished blocks in order.
      while (this.#inFlight.length >= this.#concurrency) this.push(await this.#inFlight.shift()!);
    }
  }

  #dispatch(block: Buffer, last: boolean): void {
    const options: zlib.ZlibOptions = {
      level: this.#level,
      finishFlush: last ? zlib.constants.Z_FINISH : zlib.constants.Z_SYNC_FLUSH,
      // One output buffer per block: a single trip to the thread pool.
      chunkSize: Math.max(64 * 1024, block.length + (block.length >> 3) + 1024),
      ...(this.#previousTail ? { dictionary: this.#previousTail } : {}),
    };
    const job = deflateRaw(block, options);
    job.catch(() => undefined);
    this.#inFlight.push(job);
    this.#previousTail = Buffer.from(block.subarray(Math.max(0, block.length - WINDOW)));
  }

  /** The first `count` pending bytes as one buffer. */
  #take(count: number): Buffer {
    const all = this.#pending.length === 1 ? this.#pending[0]! : Buffer.concat(this.#pending, this.#pendingSize);
    const block = all.subarray(0, count);
    const rest = all.subarray(count);
    this.#pending = rest.length > 0 ? [rest] : [];
    this.#pendingSize = rest.length;
    return block;
  }
}

type Crc32 = (data: Buffer, value?: number) => number;

/** zlib.crc32 (Node ≥ 20.15), else a table-driven CRC-32. */
const crc32: Crc32 = (zlib as unknown as { crc32?: Crc32 }).crc32 ?? tableCrc32;

let table: Uint32Array | undefined;

function tableCrc32(data: Buffer, value = 0): number {
  if (!table) {
    table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
  }
  let crc = ~value >>> 0;
  for (let i = 0; i < data.length; i++) crc = table[(crc ^ data[i]!) & 0xff]! ^ (crc >>> 8);
  return ~crc >>> 0;
}
