// Positional reads from a local file through a read-ahead window, for tar-scan.ts's header walks and
// the reads of bodies they locate. Layer tars are read twice by the flattener: headers (walking
// forward), then the bodies of the entries that survive (forward when the layer is sorted as the output
// is, anywhere otherwise). The window grows while reads continue where
// the last one ended and shrinks back on a jump, so a forward walk costs one read per MiB and a random
// one does not read a MiB per small file. Reads are synchronous: they hit the page cache, and a
// syscall costs less than a trip through the thread pool per entry.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';

const WINDOW = 1 << 20;
const MIN_READ_AHEAD = 64 << 10;

export class RangeReader {
  readonly #fd: number;
  readonly #window = Buffer.allocUnsafe(WINDOW);
  /** file position of #window[0] and how many bytes of it are valid */
  #start = 0;
  #length = 0;
  #readAhead = MIN_READ_AHEAD;

  /** the file's size when it was opened */
  readonly size: number;

  constructor(readonly path: string) {
    this.#fd = openSync(path, 'r');
    try {
      this.size = fstatSync(this.#fd).size;
    } catch (err) {
      closeSync(this.#fd);
      throw err;
    }
  }

  /**
   * Copy `length` bytes at file `position` into `target` at `offset`; returns how many bytes were there
   * (fewer than asked only at the end of the file).
   */
  readInto(position: number, length: number, target: Buffer, offset: number): number {
    if (position >= this.#start && position + length <= this.#start + this.#length) {
      return this.#window.copy(target, offset, position - this.#start, position - this.#start + length);
    }
    if (length >= WINDOW / 2) return this.#readFully(position, length, target, offset);
    this.#fill(position, length);
    const available = Math.min(length, this.#length);
    return this.#window.copy(target, offset, 0, available);
  }

  /** `length` bytes at `position` as a view that stays valid only until the next read; shorter at the end of the file. */
  peek(position: number, length: number): Buffer {
    if (!(position >= this.#start && position + length <= this.#start + this.#length)) {
      if (length > WINDOW) throw new RangeError(`RangeReader: ${length} bytes do not fit the read-ahead window`);
      this.#fill(position, length);
    }
    const from = position - this.#start;
    return this.#window.subarray(from, Math.min(from + length, this.#length));
  }

  /** Load the window at `position` with at least `length` bytes (if the file has them). */
  #fill(position: number, length: number): void {
    const forward = position >= this.#start && position <= this.#start + this.#length;
    this.#readAhead = forward ? Math.min(WINDOW, this.#readAhead * 2) : MIN_READ_AHEAD;
    this.#start = position;
    this.#length = this.#readFully(position, Math.max(length, this.#readAhead), this.#window, 0);
  }

  close(): void {
    closeSync(this.#fd);
  }

  #readFully(position: number, length: number, target: Buffer, offset: number): number {
    let done = 0;
    while (done < length) {
      const n = readSync(this.#fd, target, offset + done, length - done, position + done);
      if (n === 0) break;
      done += n;
    }
    return done;
  }
}
