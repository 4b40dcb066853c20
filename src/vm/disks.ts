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

export async function createScratchDisk(path: string, sizeMiB: number, label = 'dockvm-scratch'): Promise<void> {
  if (!Number.isInteger(sizeMiB) || sizeMiB < 8) throw new VmError(`scratch disk size must be a whole number of MiB, at least 8 (got ${sizeMiB})`);
  await qemuImgCreate(path, sizeMiB * 1024 * 1024, 'raw');
  try {
    // no inline_data (a host's mke2fs.conf may turn it on): a small file's bytes would sit in its inode,
    // not in an extent the host can read, and the guest would copy them (vm/upper-manifest.c)
    await execa('mkfs.ext4', ['-F', '-q', '-L', label, '-O', '^inline_data', '-E', 'root_owner=0:0', path], {
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
