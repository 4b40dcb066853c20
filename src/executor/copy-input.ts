// A COPY/ADD step's items as one tar, the way the guest unpacks it at the destination: paths relative to
// it, --chmod applied, mtimes clamped as the layer will clamp them. The same bytes are hashed for the
// step's cache key (so a changed file, mode or name changes the key, a touched but unchanged one does
// not) and, when the step must be built, written onto the VM's inputs disk.
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DigestingStream, type Digest } from '../image/digest.js';
import { TarWriter, type TarEntry } from '../layer/tar.js';
import type { CopyItem } from './copy-items.js';

export interface TarResult {
  digest: Digest;
  size: number;
}

/** Write `items` as a tar into `sink` (or only hash them, without one). */
export async function writeItemsTar(items: AsyncIterable<CopyItem>, options: { chmod?: number; clampMtime: number; sink?: Writable }): Promise<TarResult> {
  const writer = new TarWriter();
  const digest = new DigestingStream();
  const sink = options.sink ?? discard();
  const writing = pipeline(writer.stream, digest, sink);
  try {
    for await (const item of items) {
      const entry: TarEntry = { ...item.entry, path: item.target };
      if (options.chmod !== undefined && entry.type !== 'symlink' && entry.type !== 'link') entry.mode = options.chmod;
      if (entry.mtime > options.clampMtime) entry.mtime = options.clampMtime;
      await writer.add(entry, entry.type === 'file' && entry.size > 0 && item.content ? await item.content() : undefined);
    }
    writer.finish();
  } catch (err) {
    writer.destroy(err as Error);
    await writing.catch(() => undefined);
    throw err;
  }
  await writing;
  return { digest: digest.digest, size: digest.size };
}

function discard(): Writable {
  return new Writable({ write: (_chunk, _encoding, done) => done() });
}

