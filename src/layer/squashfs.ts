// Base layers become squashfs images the guest mounts as overlay lowers, so it unpacks nothing.
// Whiteouts are turned into overlay form on the way (src/layer/overlay-form.ts) and tar2sqfs packs the
// result. Images are cached by diff_id and written atomically, so builds sharing the cache never see half
// a file. squashfs holds only the user., trusted. and security. xattr namespaces: a layer with POSIX ACLs
// gets an ext4 lower instead (src/build/lowers.ts); anything else outside them is dropped here.
import { access, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { execa } from 'execa';
import { cacheDir } from '../cache-dir.js';
import { DockvmError, MissingToolError } from '../errors.js';
import { hex } from '../image/digest.js';
import type { Layer } from '../image/image.js';
import { scanOverlayForm, writeOverlayForm, type OverlayFormScan } from './overlay-form.js';
import { TarWriter } from './tar.js';
import { writeAtomically } from '../output.js';

/**
 * Squashfs block compressor. lz4 decompresses fastest, which is what counts when the guest runs under
 * TCG; the Debian cloud kernel has CONFIG_SQUASHFS_LZ4.
 */
const COMPRESSOR = 'lz4';

/** The xattr namespaces squashfs stores (tar2sqfs refuses others, such as system.posix_acl_access). */
const SQUASHFS_XATTR = /^(user|trusted|security)\./;

/**
 * Block size: 128 KiB (tar2sqfs' default) reads large files fastest, but every mount sets up caches
 * and decompressor buffers of a few blocks each; measured here under TCG, a small layer mounts in about
 * half the time with 4 KiB blocks (5 ms against 11), which counts in a base of a hundred layers.
 */
function blockSize(contentBytes: number): number {
  return contentBytes <= SMALL_LAYER_BYTES ? 4096 : 131072;
}
const SMALL_LAYER_BYTES = 1024 * 1024;

export interface SquashfsOptions {
  /** names the layer in errors (an image reference) */
  source: string;
  cacheDir?: string;
  /** the layer's first pass, when the caller made it already */
  scan?: OverlayFormScan;
}

/**
 * Where the lower images of layers are cached (`cacheDir` overrides dockvm's cache directory). Named
 * `lowers`, not the earlier `layers`: a squashfs made there before layers with POSIX ACLs got ext4 lowers
 * lacks their ACLs, and would otherwise be found and used.
 */
export function lowerImagesDir(cacheDirOverride?: string): string {
  return join(cacheDirOverride ?? cacheDir(), 'lowers');
}

/** Where the squashfs image of `layer` is cached. */
export function squashfsPath(layer: Layer, cacheDirOverride?: string): string {
  return join(lowerImagesDir(cacheDirOverride), `${hex(layer.diffId)}.sqfs`);
}

/** The squashfs image of `layer` in overlay form, from the cache or made now. Returns its path. */
export async function squashfsForLayer(layer: Layer, options: SquashfsOptions): Promise<string> {
  const path = squashfsPath(layer, options.cacheDir);
  if (await exists(path)) return path;
  await mkdir(lowerImagesDir(options.cacheDir), { recursive: true });
  await writeAtomically(path, (temp) => writeSquashfs(layer, temp, options.source, options.scan));
  return path;
}

async function writeSquashfs(layer: Layer, output: string, source: string, knownScan?: OverlayFormScan): Promise<void> {
  const what = `${source} layer ${layer.diffId}`;
  const scan = knownScan ?? (await scanOverlayForm(layer, what));
  const writer = new TarWriter();
  const args = ['--quiet', '--force', '--no-skip', '-c', COMPRESSOR, '-b', String(blockSize(scan.contentBytes)), '-j', '2', '--defaults', 'mtime=0', output];
  const packer = execa('tar2sqfs', args, {
    stdin: 'pipe',
    stdout: 'ignore',
    stderr: 'pipe',
    reject: false,
  });
  const feeding = pipeline(writer.stream, packer.stdin!).catch(() => undefined);
  try {
    await writeOverlayForm(layer, writer, scan, { what, keepXattr: (name) => SQUASHFS_XATTR.test(name) });
    writer.finish();
  } catch (err) {
    writer.destroy(err as Error);
    packer.kill();
    await packer;
    throw err;
  }
  await feeding;
  const result = await packer;
  if (result.failed) {
    if ((result as { code?: string }).code === 'ENOENT') {
      throw new MissingToolError('tar2sqfs not found: install squashfs-tools-ng (apt-get install squashfs-tools-ng)');
    }
    throw new DockvmError(`tar2sqfs failed on ${what}: ${String(result.stderr).trim() || `exit code ${result.exitCode}`}`, {
      command: 'tar2sqfs',
      exitCode: result.exitCode,
    });
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}
