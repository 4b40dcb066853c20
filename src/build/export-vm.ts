// dockvm export --engine vm (nixpkgs exportImage the way nixpkgs does it): the image's layers mounted as
// lowers (src/build/lowers.ts) of a read-only overlay in the build VM, GNU tar of the merged view written
// onto an output disk, and that tar turned on the host into the same bytes the native engine
// (src/flatten) writes: sorted, parents first, hard links pointing backwards, mtimes clamped, overlay
// xattrs dropped.
//
// One thing the merged view cannot know: a directory that a layer holds only because an entry lies
// under it (no entry of its own, or only an opaque marker) gets metadata tar2sqfs or the converter
// invents (0755, root, mtime 0). The native engine does not invent: such a directory shows the entry a
// lower layer declared for it, or is left out. So the host reads the layers' headers (also to refuse the
// bad input the native engine refuses, before any VM boots), and for those directories only, the
// layers' own answer replaces the invented one.
import { join } from 'node:path';
import { withTempDir } from '../cleanup.js';
import { TarFormatError, UsageError, VmError, stderrTail } from '../errors.js';
import { MergeIndex } from '../flatten/merge.js';
import type { Image } from '../image/image.js';
import { writeLayerFile } from '../layer/layer-file.js';
import { OVERLAY_XATTR_PREFIX, isOverlayWhiteout, opaqueDirOf, whiteoutTarget } from '../layer/overlay.js';
import { layerHeaders } from '../layer/tar-scan.js';
import { printable, type TarEntry } from '../layer/tar.js';
import { qemuImgCreate } from '../vm/index.js';
import { withBuildVm, type LowerImage } from './build-vm.js';
import { lowersFor } from './lowers.js';

export interface VmExportOptions {
  /** names the image in errors (default: its first repo tag, else its config digest) */
  readonly source?: string;
  /** clamp every mtime to at most this many seconds since the epoch (--mtime, SOURCE_DATE_EPOCH) */
  readonly mtime?: number;
  /** MiB of VM memory (default: the VM runtime's) */
  readonly memoryMiB?: number;
  /** aborting kills the VM */
  readonly signal?: AbortSignal;
}

export interface VmExportResult {
  /** entries in the tar */
  entries: number;
  /** bytes of the tar */
  size: number;
  layers: number;
}

/**
 * Write the merged filesystem of `image` as a tar to the file `output` (the caller makes that atomic),
 * booting the build VM over its layers. The same bytes as the native engine's writeFlattened.
 */
export async function exportInVm(image: Image, output: string, options: VmExportOptions = {}): Promise<VmExportResult> {
  const source = options.source ?? image.repoTags[0] ?? image.configDigest;
  const layers = await LayerFacts.of(image, source);
  layers.checkMtimes(options.mtime);
  // overlayfs ignores an opaque marker on a lower's root: the layers it hides are simply not mounted.
  const lowers = await lowersFor({ ...image, layers: image.layers.slice(layers.lowestVisible) }, source, { instead: 'use --engine native, which has no such limit' });
  return withTempDir('export-vm', (tmp) => tarMergedView(image, lowers, layers, output, tmp, source, options));
}

async function tarMergedView(image: Image, lowers: readonly LowerImage[], layers: LayerFacts, output: string, tmp: string, source: string, options: VmExportOptions): Promise<VmExportResult> {
  const disk = join(tmp, 'merged.tar.disk');
  await qemuImgCreate(disk, await outputDiskBytes(image), 'raw');
  const tarBytes = await withBuildVm(
    { lowers, out: disk },
    { ...(options.memoryMiB !== undefined ? { memoryMiB: options.memoryMiB } : {}), ...(options.signal ? { signal: options.signal } : {}) },
    async (vm) => {
      await vm.mustStep('mount');
      const merged = await vm.step('merged');
      if (merged.exitCode !== 0) {
        const why = /No space left on device/.test(merged.stderr) ? ': the output disk was too small (use --engine native)' : stderrTail(merged.stderr);
        throw new VmError(`export --engine vm: the build VM could not tar the merged filesystem of ${source}${why}`);
      }
      const bytes = Number(/^dockvm-tar-bytes=(\d+)$/m.exec(merged.stdout.toString())?.[1]);
      if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new VmError(`the build VM did not report the size of the merged tar of ${source}${stderrTail(merged.stderr)}`);
      return bytes;
    },
  );
  const what = `the build VM's merged view of ${source}`;
  const file = await writeLayerFile(disk, output, {
    source: what,
    size: tarBytes,
    ...(options.mtime !== undefined ? { clampMtime: options.mtime } : {}),
    convert: (entry) => {
      const shown = mergedEntry(entry, what);
      return shown.type === 'directory' ? layers.resolveDirectory(shown) : [shown];
    },
  });
  return { entries: file.entries, size: file.size, layers: image.layers.length };
}

/** An entry of the merged view as the export shows it: overlayfs' bookkeeping xattrs dropped. */
function mergedEntry(entry: TarEntry, source: string): TarEntry {
  // overlayfs hides whiteouts in a merged view; one showing up means the lowers were not merged.
  if (isOverlayWhiteout(entry)) {
    throw new TarFormatError(`${source}: entry ${printable(entry.path)} is an overlay whiteout device, which a merged view never shows`, { entry: entry.path });
  }
  if (!entry.xattrs) return entry;
  const kept = Object.entries(entry.xattrs).filter(([name]) => !name.startsWith(OVERLAY_XATTR_PREFIX));
  const { xattrs: _all, ...rest } = entry;
  return kept.length > 0 ? { ...rest, xattrs: Object.fromEntries(kept) } : rest;
}

/**
 * What the layers' headers say, for what the merged view cannot: the directories it shows with invented
 * metadata, the layers a root opaque marker hides, mtimes squashfs cannot hold. Indexing them the way
 * the native engine does also refuses the bad input it refuses (an entry written through a symlink).
 *
 * The layer that shows a directory in the merged view is the topmost one holding its path at all; when
 * that layer declares the directory, the view is right; otherwise the native engine's winner (the entry
 * a lower layer declared) replaces it, and with no winner the directory is left out.
 */
class LayerFacts {
  private constructor(
    /** per layer (bottom first): every path its squashfs holds, directories implied by entries included */
    private readonly held: readonly Set<string>[],
    /** per layer: the directories it declares (its last entry for the path is a directory) */
    private readonly declared: readonly Set<string>[],
    /** the native engine's choice for every path */
    private readonly winners: ReadonlyMap<string, TarEntry>,
    /** the lowest layer no root opaque marker hides */
    readonly lowestVisible: number,
    private readonly source: string,
  ) {}

  static async of(image: Image, source: string): Promise<LayerFacts> {
    const count = image.layers.length;
    const describe = (i: number) => `${source}: layer ${i + 1}/${count} (${image.layers[i]!.diffId})`;
    const index = new MergeIndex(describe);
    const held: Set<string>[] = [];
    const declared: Set<string>[] = [];
    let lowestVisible = 0;
    for (let i = count - 1; i >= 0; i--) {
      const entries = await layerHeaders(image.layers[i]!, describe(i));
      index.addLayer(i, entries);
      held[i] = new Set();
      declared[i] = new Set();
      for (const { entry } of entries) {
        const opaque = opaqueDirOf(entry.path);
        if (opaque === '' && lowestVisible === 0) lowestVisible = i;
        // The path the squashfs conversion (src/layer/squashfs.ts) gives the entry.
        const path = opaque ?? whiteoutTarget(entry.path) ?? entry.path;
        for (let at = path; at !== '' && !held[i]!.has(at); at = at.slice(0, Math.max(0, at.lastIndexOf('/')))) held[i]!.add(at);
        if (path !== entry.path) continue;
        if (entry.type === 'directory') declared[i]!.add(path);
        else declared[i]!.delete(path);
      }
    }
    const winners = new Map<string, TarEntry>();
    for (const { path, inode } of index.winners) winners.set(path, { ...inode.entry, path });
    return new LayerFacts(held, declared, winners, lowestVisible, source);
  }

  /** squashfs keeps mtimes as 32-bit unsigned seconds: refuse what it would change (after the clamp). */
  checkMtimes(clamp: number | undefined): void {
    for (const entry of this.winners.values()) {
      const mtime = clamp === undefined ? entry.mtime : Math.min(entry.mtime, clamp);
      if (mtime >= 0 && mtime <= MAX_SQUASHFS_TIME) continue;
      throw new UsageError(
        `${this.source}: entry ${printable(entry.path)} has mtime ${entry.mtime}, which --engine vm cannot show (squashfs keeps ` +
          `0 to ${MAX_SQUASHFS_TIME}); use --engine native${mtime > 0 ? ', or clamp it with --mtime' : ''}`,
        { entry: entry.path },
      );
    }
  }

  /** The entries to write for a directory of the merged view: itself, the layers' entry, or none. */
  resolveDirectory(shown: TarEntry): TarEntry[] {
    for (let i = this.held.length - 1; i >= 0; i--) {
      if (!this.held[i]!.has(shown.path)) continue;
      if (this.declared[i]!.has(shown.path)) return [shown];
      break;
    }
    const winner = this.winners.get(shown.path);
    return winner?.type === 'directory' ? [winner] : [];
  }
}

const MAX_SQUASHFS_TIME = 0xffffffff;

/**
 * Size of the sparse output disk: the merged tar holds at most every layer's entries, each with at most
 * one more header than the layer gave it, so twice the layers' tars plus room is plenty.
 */
async function outputDiskBytes(image: Image): Promise<number> {
  let total = 0;
  for (const layer of image.layers) {
    const local = await layer.localTar?.();
    // A compressed blob's tar is larger than the blob; 8× covers what gzip does to filesystem trees.
    total += local ? local.size : (await layer.blob()).size * 8;
  }
  return Math.ceil((total * 2 + 64 * 1024 * 1024) / 4096) * 4096;
}
