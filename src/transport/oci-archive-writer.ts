// Writing an OCI archive (oci-archive:PATH): an OCI layout directory as one reproducible tar.
import { createReadStream } from 'node:fs';
import { walkDirectory } from '../layer/directory.js';
import { TarWriter } from '../layer/tar.js';
import { writeOutput } from '../output.js';

/** An OCI archive: the layout `dir` as a tar at `output` (oci-archive:PATH). */
export async function writeOciArchive(output: string, dir: string): Promise<void> {
  await writeOutput(output.slice('oci-archive:'.length), () => directoryTar(dir));
}

/** A directory as a reproducible tar: sorted, root-owned, mtime 0 (an OCI archive of a layout). */
function directoryTar(dir: string) {
  const writer = new TarWriter();
  void (async () => {
    for await (const { entry, file } of walkDirectory(dir, { uid: 0, gid: 0, followDirSymlinks: false })) {
      await writer.add({ ...entry, mtime: 0 }, file && entry.size > 0 ? createReadStream(file) : undefined);
    }
    writer.finish();
  })().catch((err: Error) => writer.destroy(err));
  return writer.stream;
}
