// Tars for tests, made by dockvm's own writer.
import { TarWriter, type TarEntry } from '../../src/layer/tar.js';
import { collect } from './streams.js';

/** The tar TarWriter makes of `list`, in the order given: each entry with its body (a regular file's content). */
export async function writeTar(list: readonly (readonly [TarEntry, Buffer?])[]): Promise<Buffer> {
  const writer = new TarWriter();
  const out = collect(writer.stream);
  for (const [entry, body] of list) await writer.add(entry, body);
  writer.finish();
  return out;
}
