// The VM's inputs disk: every tar a stage's steps read (COPY/ADD items, bind mount sources), one after
// another in a raw file, each at a 512-byte boundary; a guest step reads its tar by offset and size.
// Bulk data goes over a block device: the agent channel moves a few MB/s (DESIGN.md "The VM").
import { createWriteStream, type WriteStream } from 'node:fs';
import { truncate } from 'node:fs/promises';
import type { Writable } from 'node:stream';

export interface InputRange {
  offset: number;
  size: number;
}

export class InputsDisk {
  #size = 0;
  #used = false;

  constructor(readonly path: string) {}

  /** Append what `write` writes into the sink it is given; its range on the disk. */
  async append(write: (sink: Writable) => Promise<unknown>): Promise<InputRange> {
    const offset = this.#size;
    const stream: WriteStream = createWriteStream(this.path, { flags: this.#used ? 'r+' : 'w', start: offset });
    this.#used = true;
    await write(stream);
    const size = stream.bytesWritten;
    this.#size = offset + Math.ceil(size / 512) * 512;
    return { offset, size };
  }

  /** Whether anything was written: a disk with nothing on it is not attached. */
  get used(): boolean {
    return this.#used;
  }

  /** Pad to whole MiB (QEMU wants whole sectors; the guest reads no further than each tar's size). */
  async finish(): Promise<void> {
    if (!this.#used) return;
    await truncate(this.path, Math.max(1, Math.ceil(this.#size / (1 << 20))) * (1 << 20));
  }
}
