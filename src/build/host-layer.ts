// The new layer made on the host, without a VM: when the spec has no runAsRoot there is nothing that needs
// root, so copyToRoot (and extraCommands, run unprivileged in the layer's directory as nixpkgs does) is
// packed here directly.
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { execa } from 'execa';
import { ScriptError, stderrTail } from '../errors.js';
import { walkDirectory } from '../layer/directory.js';
import { writeLayerFile, type LayerFile } from '../layer/layer-file.js';
import { TarWriter } from '../layer/tar.js';
import type { BuildSpec } from '../spec/load.js';
import { copyToRootTar } from './copy-to-root.js';

export async function buildLayerOnHost(spec: BuildSpec, tmp: string, clampMtime: number): Promise<LayerFile> {
  const copyTar = join(tmp, 'copy-to-root.tar');
  await pipeline(copyToRootTar(spec.copyToRoot, spec), createWriteStream(copyTar));
  if (spec.extraCommands.trim() === '') {
    return writeLayerFile(copyTar, join(tmp, 'layer.tar'), { source: 'copyToRoot', clampMtime });
  }
  // extraCommands needs a directory to run in: unpack, run, walk it back into a tar.
  const root = join(tmp, 'root');
  await mkdir(root);
  await execa('tar', ['-C', root, '--no-same-owner', '-xf', copyTar]);
  const result = await execa('sh', ['-e', '-c', spec.extraCommands], { cwd: root, reject: false, stdin: 'ignore', stdout: 'inherit', stderr: ['inherit', 'pipe'] });
  if (result.exitCode !== 0) {
    throw new ScriptError(`extraCommands failed with exit code ${result.exitCode}${stderrTail(String(result.stderr))}`, { command: 'extraCommands', exitCode: result.exitCode });
  }
  const walked = join(tmp, 'walked.tar');
  const writer = new TarWriter();
  const writing = pipeline(writer.stream, createWriteStream(walked));
  for await (const { entry, file } of walkDirectory(root, { uid: spec.uid, gid: spec.gid, followDirSymlinks: false })) {
    await writer.add(entry, file && entry.size > 0 ? createReadStream(file) : undefined);
  }
  writer.finish();
  await writing;
  return writeLayerFile(walked, join(tmp, 'layer.tar'), { source: 'extraCommands output', clampMtime });
}

