// The read-only lowers the build VM mounts for an image's layers, each made once and cached by diff_id
// (lowerImagesDir): a squashfs image made on the host (src/layer/squashfs.ts), or, for a layer with POSIX
// ACLs, an ext4 image. The squashfs format has only the user, trusted and security xattr namespaces, so no
// squashfs packer can carry system.posix_acl_*; and no tool here writes an ext4 image holding owners,
// devices and xattrs without root (mke2fs -d copies a directory, which only root could make). So the
// build VM makes it: GNU tar unpacks the layer's overlay form onto an empty ext4 disk, once per layer.
// Measured under TCG (2026-12-01), once per layer: the fixture's 4-entry ACL layer cost 0.6-0.7 of a bare
// boot measured in the same run (the unpack is nothing); the 195 MB Debian base, were it to hold ACLs,
// 2.0 s of boot + 8.2 s of unpacking, against 1.4 s for tar2sqfs. Layers without ACLs are made as before
// and found with one more access() (tens of microseconds).
import { createWriteStream } from 'node:fs';
import { access, mkdir, stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { withTempDir } from '../cleanup.js';
import { VmError, stderrTail } from '../errors.js';
import { hex } from '../image/digest.js';
import type { Image, Layer } from '../image/image.js';
import { scanOverlayForm, writeOverlayForm, type OverlayFormScan } from '../layer/overlay-form.js';
import { lowerImagesDir, squashfsForLayer, squashfsPath } from '../layer/squashfs.js';
import { TarWriter } from '../layer/tar.js';
import { writeAtomically } from '../output.js';
import { createScratchDisk } from '../vm/index.js';
import { EXT4_LOWER_SUFFIX, checkLowerCount, describeExit, withBuildVm, type LowerImage, type LowersOptions } from './build-vm.js';

export interface LowerOptions {
  /** names the image in errors */
  source: string;
  /** overrides dockvm's cache directory */
  cacheDir?: string;
}

/**
 * The lowers of an image's layers (bottom first), made on first use and cached. An image with more layers
 * than the build VM stacks is refused here, before anything is converted.
 */
export async function lowersFor(image: Image | undefined, source: string, options: LowersOptions = {}): Promise<LowerImage[]> {
  const layers = image?.layers ?? [];
  checkLowerCount(layers.length, source, options);
  const lowers: LowerImage[] = [];
  for (const layer of layers) {
    const path = await lowerForLayer(layer, { source });
    lowers.push({ path, fsType: path.endsWith(EXT4_LOWER_SUFFIX) ? 'ext4' : 'squashfs' });
  }
  return lowers;
}

/** The lower image of one layer: its cached squashfs or ext4 image, else one made now. Returns its path. */
export async function lowerForLayer(layer: Layer, options: LowerOptions): Promise<string> {
  // Which image a layer has in the cache says which kind it needs: only a new layer is scanned.
  const ext4 = ext4LowerPath(layer, options.cacheDir);
  if (await exists(ext4)) return ext4;
  const squashfs = squashfsPath(layer, options.cacheDir);
  if (await exists(squashfs)) return squashfs;
  const what = `${options.source} layer ${layer.diffId}`;
  const scan = await scanOverlayForm(layer, what);
  if (scan.posixAcls === 0) return squashfsForLayer(layer, { ...options, scan });
  await mkdir(lowerImagesDir(options.cacheDir), { recursive: true });
  await writeAtomically(ext4, (temp) => writeExt4Lower(layer, temp, scan, what));
  return ext4;
}

export function ext4LowerPath(layer: Layer, cacheDirOverride?: string): string {
  return join(lowerImagesDir(cacheDirOverride), `${hex(layer.diffId)}${EXT4_LOWER_SUFFIX}`);
}

/** GNU tar reads in records of 20 blocks: a tar disk of whole records has no short read at its end. */
const TAR_RECORD = 20 * 512;
const MiB = 1024 * 1024;

async function writeExt4Lower(layer: Layer, output: string, scan: OverlayFormScan, what: string): Promise<void> {
  await withTempDir('ext4-lower', async (tmp) => {
    const tar = join(tmp, 'overlay-form.tar');
    const writer = new TarWriter();
    const writing = pipeline(writer.stream, createWriteStream(tar));
    let entries: number;
    try {
      // GNU tar would give the directories a layer only implies the time of day: tar2sqfs's metadata instead.
      entries = await writeOverlayForm(layer, writer, scan, { what, declareImpliedDirs: true });
      writer.finish();
    } catch (err) {
      writer.destroy(err as Error);
      await writing.catch(() => undefined);
      throw err;
    }
    await writing;
    const { size } = await stat(tar);
    await truncate(tar, Math.ceil(size / TAR_RECORD) * TAR_RECORD);
    // Sparse, so room to spare costs nothing: beyond the tar's own bytes, per entry up to a block of
    // rounding and an xattr block (two ACLs do not fit in the inode), and a margin for ext4's metadata.
    const sizeMiB = Math.ceil((size + entries * 8192) * 1.05 / MiB) + 16;
    await createScratchDisk(output, sizeMiB, 'dockvm-lower', { inodes: entries + 64, journal: false });
    await withBuildVm({ lowers: [], copy: tar, out: output }, {}, async (vm) => {
      const fill = await vm.step('fill-lower');
      if (fill.exitCode !== 0) {
        throw new VmError(`${what} holds POSIX ACLs, so its lower is an ext4 image, which the build VM could not make (${describeExit(fill)})${stderrTail(fill.stderr)}`);
      }
    });
  });
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}
