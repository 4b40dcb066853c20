// Disks for the build VM: sparse raw scratch disks formatted ext4 on the host (no root needed: mkfs.ext4
// writes into a plain file, and root_owner makes the root directory 0:0 whoever runs it), and disks made
// of several files end to end.
import { stat } from 'node:fs/promises';
import { execa } from 'execa';
import { MissingToolError, VmError } from '../errors.js';
import { qemuImgCreate } from './qemu-img.js';

/** One file of a disk made of several, and where it lies on that disk. */
export interface DiskPart {
  readonly path: string;
  /** where the file starts on the disk, in bytes: a multiple of 512 (a sector, QEMU's unit) */
  readonly offset: number;
  /** the bytes it takes there, a multiple of 512: the file, then zeros up to the next sector */
  readonly size: number;
}

interface DiskCommon {
  /** attach read-only (layer images); default false (a disk of parts is always read-only) */
  readonly readOnly?: boolean;
  /** what the guest finds it by (/sys/block/sdX/device/model): 1 to 16 letters, digits or _.@+- (default diskN) */
  readonly name?: string;
}

/**
 * A raw disk image file, or several files end to end (`partsOf`), which QEMU reads in place through a
 * VMDK descriptor of flat extents: one device for many layer images, with no copy made.
 */
export type VmDisk = DiskCommon & ({ readonly path: string; readonly parts?: never } | { readonly parts: readonly DiskPart[]; readonly path?: never });

/** The layout of `files` end to end on one disk, each from a sector boundary. */
export async function partsOf(files: readonly string[]): Promise<DiskPart[]> {
  const parts: DiskPart[] = [];
  let offset = 0;
  for (const path of files) {
    const size = Math.ceil((await stat(path)).size / 512) * 512;
    parts.push({ path, offset, size });
    offset += size;
  }
  return parts;
}

/**
 * The VMDK descriptor QEMU reads `parts` through: one FLAT extent per file, in sectors. The tail of a
 * file that does not fill its last sector reads as zeros (QEMU pads reads past the end of a file).
 */
export function vmdkDescriptor(parts: readonly DiskPart[]): string {
  const extents = parts.map(({ path, size }) => {
    if (/["\n\r]/.test(path)) throw new VmError(`cannot attach ${JSON.stringify(path)} as part of a disk: its name has a quote or a line break`);
    return `RW ${size / 512} FLAT "${path}" 0`;
  });
  // The layout `qemu-img create -f vmdk -o subformat=monolithicFlat` writes; QEMU 7.2 misreads the
  // first extent when no comment line comes before the extents.
  return ['# Disk DescriptorFile', 'version=1', 'CID=fffffffe', 'parentCID=ffffffff', 'createType="monolithicFlat"', '', '# Extent description', ...extents, '', '# The Disk Data Base', '#DDB', '', 'ddb.adapterType = "ide"', ''].join('\n');
}

export interface Ext4Options {
  /** at least this many inodes (default: mkfs.ext4's ratio to the size) */
  inodes?: number;
  /** false: no journal, for a disk filled once and then only read, or thrown away with its VM (default true) */
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
    // no inline_data (a host's mke2fs.conf may turn it on): a small file's bytes would sit in its inode,
    // not in an extent the host can read, and the guest would copy them (vm/upper-manifest.c)
    await execa('mkfs.ext4', ['-F', '-q', '-L', label, '-O', '^inline_data', '-E', 'root_owner=0:0', ...extra, path], {
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
