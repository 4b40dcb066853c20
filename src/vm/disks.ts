// Disks for the build VM: sparse raw scratch disks formatted ext4 on the host (no root needed: mkfs.ext4
// writes into a plain file, and root_owner makes the root directory 0:0 whoever runs it).
import { execa } from 'execa';
import { MissingToolError, VmError } from '../errors.js';
import { qemuImgCreate } from './qemu-img.js';

export interface VmDisk {
  readonly path: string;
  /** attach read-only (squashfs layers); default false */
  readonly readOnly?: boolean;
  /** virtio-blk serial the guest sees in /sys/block/vdX/serial, at most 20 characters (default diskN) */
  readonly name?: string;
}

export interface Ext4Options {
  /** at least this many inodes (default: mkfs.ext4's ratio to the size) */
  inodes?: number;
  /** false: no journal, for a disk that is filled once and then only read (default true) */
  journal?: boolean;
}

export async function createScratchDisk(path: string, sizeMiB: number, label = 'dockvm-scratch', ext4: Ext4Options = {}): Promise<void> {
  if (!Number.isInteger(sizeMiB) || sizeMiB < 8) throw new VmError(`scratch disk size must be a whole number of MiB, at least 8 (got ${sizeMiB})`);
  await qemuImgCreate(path, sizeMiB * 1024 * 1024, 'raw');
  const extra = [
    ...(ext4.inodes !== undefined ? ['-N', String(ext4.inodes)] : []),
    ...(ext4.journal === false ? ['-O', '^has_journal'] : []),
  ];
  try {
    await execa('mkfs.ext4', ['-F', '-q', '-L', label, '-E', 'root_owner=0:0', ...extra, path], {
      stdin: 'ignore',
      // mkfs.ext4 lives in /usr/sbin, which a normal user's PATH may lack
      env: { PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` },
    });
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') {
      throw new MissingToolError('mkfs.ext4 not found: install e2fsprogs (apt-get install e2fsprogs)', { cause: err, command: 'mkfs.ext4' });
    }
    throw new VmError(`mkfs.ext4 could not format ${path}: ${((err as { stderr?: string }).stderr ?? '').trim()}`, { cause: err, command: 'mkfs.ext4' });
  }
}
