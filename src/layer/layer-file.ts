// An untrusted tar (a copyToRoot tar, the guest's upperdir) or list of entries (the guest's upper
// manifest, upper-manifest.ts) turned into a normalised layer file: read with strict paths, converted
// entry by entry (whiteouts into OCI form), checked so that nothing lies under a non-directory, sorted
// and written reproducibly (layer-tar.ts), its diff_id computed while it is written.
import { createReadStream } from 'node:fs';
import { UnsafeTarEntryError } from '../errors.js';
import type { Digest } from '../image/digest.js';
import { writeLayerTar } from './layer-tar.js';
import { normalizeEntries, type LayerEntry } from './normalize.js';
import { printable, readTar, type TarEntry } from './tar.js';
import { startPhase, timePhase } from '../timing.js';

export interface LayerFileOptions {
  /** names the input in errors ("guest output", "copyToRoot") */
  source: string;
  /** bytes of the input tar to read (the rest of a disk image is not part of it) */
  size?: number;
  /** entry → the entries it becomes (default: itself) */
  convert?: (entry: TarEntry) => TarEntry[];
  clampMtime?: number;
}

export interface LayerFile {
  path: string;
  diffId: Digest;
  size: number;
  /** how many entries the layer holds */
  entries: number;
  /** the input's entry for its root directory, which the layer leaves out (see writeLayerFile) */
  root?: TarEntry;
}

export async function writeLayerFile(input: string, output: string, options: LayerFileOptions): Promise<LayerFile> {
  const stream = createReadStream(input, options.size === undefined ? {} : { end: options.size - 1 });
  async function* entries(): AsyncGenerator<LayerEntry> {
    for await (const { entry, dataOffset, body } of readTar(stream, { source: options.source })) {
      body.resume();
      yield entry.type === 'file' && entry.size > 0 ? { entry, body: { file: input, offset: dataOffset } } : { entry };
    }
  }
  return writeLayerFromEntries(entries(), output, options);
}

/**
 * The same for entries read some other way (the build VM's upper manifest), each with where its content
 * is; `options.size` does not apply.
 */
export async function writeLayerFromEntries(input: AsyncIterable<LayerEntry> | Iterable<LayerEntry>, output: string, options: LayerFileOptions): Promise<LayerFile> {
  const convert = options.convert ?? ((entry: TarEntry) => [entry]);
  const listed = startPhase('host: entries read and sorted');
  const collected = new Map<string, LayerEntry>();
  let root: TarEntry | undefined;
  for await (const { entry, body } of input) {
    // No layer carries its root directory: Docker, BuildKit and buildah write none, and moby,
    // containerd and containers/storage skip one when they unpack a layer.
    if (entry.path === '') {
      root = entry;
      continue;
    }
    for (const converted of convert(entry)) {
      const keepBody = body && converted.type === 'file' && converted.size > 0;
      collected.set(converted.path, keepBody ? { entry: converted, body } : { entry: converted });
    }
  }
  checkNoEntryUnderNonDirectory(collected, options.source);
  const entries = normalizeEntries([...collected.values()], { source: options.source, ...(options.clampMtime === undefined ? {} : { clampMtime: options.clampMtime }) });
  listed();
  const { digest, size } = await timePhase('host: layer tar written and hashed', () => writeLayerTar(entries, output));
  return { path: output, diffId: digest, size, entries: entries.length, ...(root ? { root } : {}) };
}

/** A layer where "a" is a symlink or file and "a/b" exists would make extractors write through "a". */
function checkNoEntryUnderNonDirectory(entries: ReadonlyMap<string, LayerEntry>, source: string): void {
  for (const path of entries.keys()) {
    for (let slash = path.indexOf('/'); slash >= 0; slash = path.indexOf('/', slash + 1)) {
      const parent = entries.get(path.slice(0, slash));
      if (parent && parent.entry.type !== 'directory') {
        throw new UnsafeTarEntryError(
          `${source}: entry ${printable(path)} lies under ${printable(parent.entry.path)}, which is a ${parent.entry.type}, not a directory`,
          { source, entry: path },
        );
      }
    }
  }
}
