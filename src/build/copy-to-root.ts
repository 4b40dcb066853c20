// copyToRoot: host directories and tarballs, as one tar stream to unpack over the new layer's root.
// Later sources win over earlier ones, as successive rsyncs do in nixpkgs. Every entry is owned by the
// spec's uid/gid. A directory source's own root is not included (its mode must not replace "/"'s).
import { createReadStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { SpecError } from '../errors.js';
import { walkDirectory } from '../layer/directory.js';
import { readTar, TarWriter, type TarEntry } from '../layer/tar.js';

export interface CopyToRootOptions {
  uid: number;
  gid: number;
  keepContentsDirlinks: boolean;
  /** where an entry lands over the base (src/build/copy-over-base.ts); undefined: it is not written */
  place?: (entry: TarEntry) => TarEntry | undefined;
}

/** One tar holding every copyToRoot source. The returned stream fails if a source cannot be read. */
export function copyToRootTar(sources: readonly string[], options: CopyToRootOptions): Readable {
  const writer = new TarWriter();
  void (async () => {
    for (const source of sources) await addSource(writer, source, options);
    writer.finish();
  })().catch((err: Error) => writer.destroy(err));
  return writer.stream;
}

async function addSource(writer: TarWriter, source: string, options: CopyToRootOptions): Promise<void> {
  const stats = await stat(source).catch((err: NodeJS.ErrnoException) => {
    throw new SpecError(`copyToRoot: cannot read ${source}: ${err.code ?? err.message}`, [], { field: 'copyToRoot', source, cause: err });
  });
  if (stats.isDirectory()) {
    const walk = walkDirectory(source, { uid: options.uid, gid: options.gid, followDirSymlinks: !options.keepContentsDirlinks });
    for await (const { entry, file } of walk) {
      const placed = options.place ? options.place(entry) : entry;
      if (placed) await writer.add(placed, file && placed.size > 0 ? createReadStream(file) : undefined);
    }
    return;
  }
  if (!stats.isFile()) throw new SpecError(`copyToRoot: ${source} is neither a directory nor a tarball`, [], { field: 'copyToRoot', source });
  const input = (await isGzip(source)) ? createReadStream(source).pipe(createGunzip()) : createReadStream(source);
  for await (const { entry, body } of readTar(input, { source: `copyToRoot ${source}` })) {
    if (entry.path === '') continue;
    const owned = { ...entry, uid: options.uid, gid: options.gid };
    const placed = options.place ? options.place(owned) : owned;
    if (placed) await writer.add(placed, placed.type === 'file' && placed.size > 0 ? body : undefined);
  }
}

async function isGzip(path: string): Promise<boolean> {
  const handle = await open(path, 'r');
  try {
    const { buffer, bytesRead } = await handle.read(Buffer.alloc(2), 0, 2, 0);
    return bytesRead === 2 && buffer[0] === 0x1f && buffer[1] === 0x8b;
  } finally {
    await handle.close();
  }
}
