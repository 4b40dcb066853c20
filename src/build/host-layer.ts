// The new layer made on the host, without a VM: when the spec has no runAsRoot there is nothing that needs
// root, so copyToRoot (and extraCommands, run unprivileged in the layer's directory as nixpkgs does) is
// packed here directly.
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { execa } from 'execa';
import { MissingToolError, ScriptError, stderrTail } from '../errors.js';
import { walkDirectory } from '../layer/directory.js';
import { writeLayerFile, type LayerFile } from '../layer/layer-file.js';
import { TarWriter } from '../layer/tar.js';
import type { RootStep } from '../plan/plan.js';
import { copyToRootTar } from './copy-to-root.js';

/** `copy`: the copyToRoot tar, each entry at the path it lands on over the base (src/build/copy-over-base.ts). */
export async function buildLayerOnHost(
  spec: Pick<RootStep, 'extraCommands' | 'uid' | 'gid' | 'keepContentsDirlinks'>,
  copy: string | undefined,
  tmp: string,
  clampMtime: number,
): Promise<LayerFile> {
  const copyTar = copy ?? join(tmp, 'copy-to-root.tar');
  if (copy === undefined) await pipeline(copyToRootTar([], spec), createWriteStream(copyTar));
  if (spec.extraCommands.trim() === '') {
    return writeLayerFile(copyTar, join(tmp, 'layer.tar'), { source: 'copyToRoot', clampMtime });
  }
  // extraCommands needs a directory to run in: unpack, run, walk it back into a tar.
  const root = join(tmp, 'root');
  await mkdir(root);
  await execa('tar', ['-C', root, '--no-same-owner', '-xf', copyTar]);
  // bash, as nixpkgs runs extraCommands ($0 names it in bash's messages)
  const result = await execa('bash', ['-e', '-c', spec.extraCommands, 'extraCommands'], { cwd: root, reject: false, stdin: 'ignore', stdout: 'inherit', stderr: ['inherit', 'pipe'] });
  if (result.exitCode === undefined) throw new MissingToolError(`extraCommands runs with bash, which this host cannot run: ${result.message}; install bash`, { command: 'bash' });
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

