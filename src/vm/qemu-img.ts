// A thin typed wrapper over qemu-img (create, info; a raw image made without it): the design card's "qemu-img-wrapper" package
// does not exist.
import { truncate, writeFile } from 'node:fs/promises';
import { execa } from 'execa';
import { MissingToolError, VmError } from '../errors.js';

export type ImageFormat = 'raw' | 'qcow2';

export interface ImageInfo {
  readonly format: string;
  /** the size the guest sees, bytes */
  readonly virtualSize: number;
  /** bytes the file takes on the host (sparse files take less) */
  readonly actualSize: number;
}

async function qemuImg(args: string[], what: string): Promise<string> {
  try {
    const { stdout } = await execa('qemu-img', args, { stdin: 'ignore' });
    return stdout;
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') {
      throw new MissingToolError('qemu-img not found: install qemu-utils (apt-get install qemu-utils)', { cause: err, command: 'qemu-img' });
    }
    const detail = ((err as { stderr?: string }).stderr ?? String(err)).trim().split('\n')[0];
    throw new VmError(`qemu-img could not ${what}: ${detail}`, { cause: err, command: 'qemu-img' });
  }
}

/**
 * Create a disk image; raw images are sparse, so a big size costs nothing until written. A raw image is
 * only a sparse file of its size: made here, as qemu-img would, without its process (~20 ms a spawn).
 */
export async function qemuImgCreate(path: string, sizeBytes: number, format: ImageFormat = 'raw'): Promise<void> {
  if (format !== 'raw') {
    await qemuImg(['create', '-q', '-f', format, path, String(sizeBytes)], `create ${path}`);
    return;
  }
  await writeFile(path, '')
    .then(() => truncate(path, sizeBytes))
    .catch((err: unknown) => {
      throw new VmError(`cannot create the disk image ${path}: ${(err as Error).message}`, { cause: err });
    });
}

export async function qemuImgInfo(path: string): Promise<ImageInfo> {
  const json = JSON.parse(await qemuImg(['info', '--output=json', path], `read ${path}`)) as {
    format: string;
    'virtual-size': number;
    'actual-size': number;
  };
  return { format: json.format, virtualSize: json['virtual-size'], actualSize: json['actual-size'] };
}
