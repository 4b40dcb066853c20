// An image's merged filesystem, indexed on the host for COPY --from and RUN --mount=type=bind,from=: which
// entry each path shows (the native export's pass 1, src/flatten/merge.ts), each body read by position
// from its layer's tar. Nothing is unpacked; layers that are not stored as plain tars are spooled first.
import { createWriteStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Image } from '../image/image.js';
import { MergeIndex, type Inode, type Winner } from '../flatten/merge.js';
import { RangeReader } from '../layer/range-reader.js';
import { scanTar } from '../layer/tar-scan.js';

export class ImageTree {
  readonly #byPath = new Map<string, Winner>();
  readonly #children = new Map<string, string[]>();

  private constructor(
    readonly what: string,
    winners: readonly Winner[],
    private readonly readers: readonly RangeReader[],
  ) {
    for (const winner of winners) {
      this.#byPath.set(winner.path, winner);
      const slash = winner.path.lastIndexOf('/');
      const parent = slash < 0 ? '' : winner.path.slice(0, slash);
      const list = this.#children.get(parent) ?? [];
      list.push(winner.path.slice(slash + 1));
      this.#children.set(parent, list);
    }
    for (const list of this.#children.values()) list.sort((a, b) => Buffer.compare(Buffer.from(a, 'latin1'), Buffer.from(b, 'latin1')));
  }

  /** Index `image` (top layer first); layers without a local tar are spooled into `spoolDir`. */
  static async open(image: Image, what: string, spoolDir: string): Promise<ImageTree> {
    const readers: RangeReader[] = [];
    try {
      const tars: { path: string; offset: number; size: number }[] = [];
      for (const [i, layer] of image.layers.entries()) {
        const local = await layer.localTar?.();
        if (local) {
          tars.push(local);
          continue;
        }
        const path = join(spoolDir, `${what.replace(/[^A-Za-z0-9_.-]/g, '_')}-layer-${i}.tar`);
        await pipeline(await layer.openTar(), createWriteStream(path));
        tars.push({ path, offset: 0, size: (await stat(path)).size });
      }
      for (const tar of tars) readers.push(new RangeReader(tar.path));
      const describe = (i: number) => `${what}: layer ${i + 1}/${image.layers.length}`;
      const index = new MergeIndex(describe);
      for (let i = tars.length - 1; i >= 0; i--) index.addLayer(i, scanTar(readers[i]!, tars[i]!.offset, tars[i]!.size, describe(i)));
      return new ImageTree(what, index.winners, readers);
    } catch (err) {
      for (const reader of readers) reader.close();
      throw err;
    }
  }

  /** What `path` (relative, no leading "/"; "" is the root) shows, or undefined. */
  get(path: string): Winner | undefined {
    return this.#byPath.get(path);
  }

  /** Whether `path` is a directory (the root always is; so is a parent no layer declared). */
  isDirectory(path: string): boolean {
    if (path === '') return true;
    const winner = this.#byPath.get(path);
    return winner ? winner.inode.entry.type === 'directory' : this.#children.has(path);
  }

  exists(path: string): boolean {
    return path === '' || this.#byPath.has(path) || this.#children.has(path);
  }

  /** Names in a directory, in byte order. */
  children(dir: string): readonly string[] {
    return this.#children.get(dir) ?? [];
  }

  /** A regular file's content. */
  read(inode: Inode): Buffer {
    const data = Buffer.allocUnsafe(inode.entry.size);
    const got = this.readers[inode.layer]!.readInto(inode.bodyOffset, inode.entry.size, data, 0);
    if (got !== inode.entry.size) throw new Error(`${this.what}: ${inode.entry.path} is cut short in its layer`);
    return data;
  }

  close(): void {
    for (const reader of this.readers) reader.close();
  }
}
