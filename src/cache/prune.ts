// Bounding dockvm's cache (`dockvm cache prune`, and the build cache after each entry it stores): what can
// be dropped because dockvm makes it again when needed — build cache entries with their layers, squashfs
// images of layers (CACHE/lowers), layer tars downloaded from registries (CACHE/tars), what push
// remembered about gzip (CACHE/push-gzip), snapshots of the booted VM (CACHE/snapshots, counted by
// the disk space their sparse memory files take) and RUN --mount=type=cache content (CACHE/cache-mounts,
// one tar each; a build's use touches it) — goes least recently used first until the rest fits the bound.
// A cache mount's lock file is its build's, never pruned (the build removes it; a dead build's is taken over).
// Never the guest kernels, initramfs, agents, a foreign guest's tools and apt lists (CACHE/guest-tools, CACHE/apt)
// or the KVM verdict: those are what every boot needs.
// Anything touched in the last IN_USE_GRACE_MS is kept (unless --all): a build running now may be about to
// read it. Temp files left by a crash, and entries or layers that have lost their other half, go first.
import { readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { DockvmError } from '../errors.js';
import { hex } from '../image/digest.js';
import { cacheDir } from '../cache-dir.js';
import { buildCacheDir, parseEntry } from './local-store.js';
import { formatSize, parseSize } from './size.js';
import { lowerImagesDir } from '../layer/squashfs.js';
import { snapshotsDir } from '../vm/snapshot.js';
import { cacheMountsDir } from './cache-mounts.js';

export const DEFAULT_MAX_SIZE = 10 * 1024 ** 3;
/** Files used this recently are never pruned by size: a build running now may hold or be about to open them. */
export const IN_USE_GRACE_MS = 10 * 60 * 1000;

export type CacheArea = 'build-cache' | 'layer-images' | 'layer-tars' | 'push-gzip' | 'snapshots' | 'cache-mounts';
const AREAS: readonly CacheArea[] = ['build-cache', 'layer-images', 'layer-tars', 'push-gzip', 'snapshots', 'cache-mounts'];

export interface PruneOptions {
  /** bytes the prunable caches may keep (default: DOCKVM_CACHE_MAX_SIZE, else 10 GiB) */
  maxSize?: number;
  /** drop everything prunable, however recently used */
  all?: boolean;
  /** scan only when the caches hold more than maxSize (what a build does after storing an entry) */
  onlyWhenOver?: boolean;
  /** the build cache's directory, when not the default (BuildCacheOptions.dir) */
  buildCacheDir?: string;
  env?: NodeJS.ProcessEnv;
}

export interface PrunedArea {
  area: CacheArea;
  dir: string;
  /** build cache: entries removed; elsewhere: files removed */
  removed: number;
  freedBytes: number;
  keptBytes: number;
}

export interface PruneResult {
  /** the bound applied (0 with --all) */
  maxSize: number;
  freedBytes: number;
  keptBytes: number;
  areas: PrunedArea[];
}

/** The bound from DOCKVM_CACHE_MAX_SIZE ("10G", "500M", bytes), else 10 GiB. */
export function configuredMaxSize(env: NodeJS.ProcessEnv = process.env): number {
  const text = env.DOCKVM_CACHE_MAX_SIZE;
  if (text === undefined || text === '') return DEFAULT_MAX_SIZE;
  const size = parseSize(text);
  if (size === undefined) throw new DockvmError(`DOCKVM_CACHE_MAX_SIZE="${text}" is not a size: write e.g. 10G, 500M or a number of bytes`);
  return size;
}

/** What may be dropped together, and when it was last used. */
interface Item {
  area: CacheArea;
  paths: string[];
  bytes: number;
  /** build cache: the entries it holds; elsewhere 1 */
  count: number;
  /** ms: its most recent use (mtime, or atime where reads do not touch it) */
  lastUsed: number;
  /** ms: its newest mtime or atime, for the grace period */
  touched: number;
  /** useless as it is (a temp file, an entry without its layer): removed whatever the bound */
  garbage: boolean;
}

export async function pruneCaches(options: PruneOptions = {}): Promise<PruneResult> {
  const env = options.env ?? process.env;
  const maxSize = options.all ? 0 : (options.maxSize ?? configuredMaxSize(env));
  const dirs = { ...areaDirs(env), ...(options.buildCacheDir ? { 'build-cache': options.buildCacheDir } : {}) };
  if (options.onlyWhenOver && !options.all) {
    const used = await quickUsage(Object.values(dirs));
    if (used <= maxSize) return { maxSize, freedBytes: 0, keptBytes: used, areas: AREAS.map((area) => ({ area, dir: dirs[area], removed: 0, freedBytes: 0, keptBytes: 0 })) };
  }
  const items = await scan(dirs);
  const now = Date.now();
  const inGrace = (item: Item) => !options.all && now - item.touched < IN_USE_GRACE_MS;
  let kept = items.reduce((sum, item) => sum + item.bytes, 0);
  const doomed: Item[] = [];
  for (const item of items) {
    if (item.garbage && !inGrace(item)) {
      doomed.push(item);
      kept -= item.bytes;
    }
  }
  for (const item of items.filter((i) => !i.garbage).sort((a, b) => a.lastUsed - b.lastUsed)) {
    if (kept <= maxSize) break;
    if (inGrace(item)) continue;
    doomed.push(item);
    kept -= item.bytes;
  }
  const freed = new Map<CacheArea, { removed: number; bytes: number }>();
  for (const item of doomed) {
    // Entries before their layer: a lookup never finds an entry whose layer is gone half-way.
    for (const path of item.paths) await rm(path, { recursive: true, force: true });
    const sum = freed.get(item.area) ?? { removed: 0, bytes: 0 };
    sum.removed += item.count;
    sum.bytes += item.bytes;
    freed.set(item.area, sum);
  }
  const areas = AREAS.map((area): PrunedArea => {
    const total = items.filter((item) => item.area === area).reduce((sum, item) => sum + item.bytes, 0);
    const { removed = 0, bytes = 0 } = freed.get(area) ?? {};
    return { area, dir: dirs[area], removed, freedBytes: bytes, keptBytes: total - bytes };
  });
  const freedBytes = areas.reduce((sum, area) => sum + area.freedBytes, 0);
  return { maxSize, freedBytes, keptBytes: kept, areas };
}

/** "freed 1.20 GiB (build cache: 3 entries, 800 MiB; layer images: 2, 400 MiB); 9.80 GiB kept of 10.0 GiB" */
export function describePrune(result: PruneResult): string {
  const names: Record<CacheArea, string> = { 'build-cache': 'build cache', 'layer-images': 'layer images', 'layer-tars': 'layer tars', 'push-gzip': 'push gzip notes', snapshots: 'VM snapshots', 'cache-mounts': 'cache mounts' };
  const parts = result.areas
    .filter((area) => area.removed > 0 || area.freedBytes > 0)
    .map((area) => `${names[area.area]}: ${area.area === 'build-cache' ? `${area.removed} entr${area.removed === 1 ? 'y' : 'ies'}` : area.removed}, ${formatSize(area.freedBytes)}`);
  const bound = result.maxSize > 0 ? ` of ${formatSize(result.maxSize)}` : '';
  return `freed ${formatSize(result.freedBytes)}${parts.length > 0 ? ` (${parts.join('; ')})` : ''}; ${formatSize(result.keptBytes)} kept${bound}`;
}

function areaDirs(env: NodeJS.ProcessEnv): Record<CacheArea, string> {
  const root = cacheDir(env);
  return { 'build-cache': buildCacheDir(env), 'layer-images': lowerImagesDir(root), 'layer-tars': join(root, 'tars'), 'push-gzip': join(root, 'push-gzip'), snapshots: snapshotsDir(env), 'cache-mounts': cacheMountsDir(env) };
}

interface FileInfo {
  path: string;
  name: string;
  bytes: number;
  mtime: number;
  atime: number;
}

/** Regular files under `dir` (recursively), each inode counted once (a layer hard-linked into two caches). */
async function files(dir: string, seen: Set<string>): Promise<FileInfo[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return [];
  }
  const found: FileInfo[] = [];
  for (const name of names.sort()) {
    const path = join(dir, name);
    const info = await stat(path).catch(() => undefined);
    if (!info) continue;
    if (info.isDirectory()) {
      found.push(...(await files(path, seen)));
      continue;
    }
    if (!info.isFile()) continue;
    const inode = `${info.dev}:${info.ino}`;
    const bytes = seen.has(inode) ? 0 : info.size;
    seen.add(inode);
    found.push({ path, name, bytes, mtime: info.mtimeMs, atime: info.atimeMs });
  }
  return found;
}

async function quickUsage(dirs: readonly string[]): Promise<number> {
  const seen = new Set<string>();
  let total = 0;
  for (const dir of dirs) for (const file of await files(dir, seen)) total += file.bytes;
  return total;
}

const isTemp = (name: string) => name.startsWith('.') && name.endsWith('.tmp');

async function scan(dirs: Record<CacheArea, string>): Promise<Item[]> {
  const seen = new Set<string>();
  const items = await scanBuildCache(dirs['build-cache'], seen);
  items.push(...(await scanSnapshots(dirs.snapshots)));
  for (const area of ['layer-images', 'layer-tars', 'push-gzip', 'cache-mounts'] as const) {
    for (const file of await files(dirs[area], seen)) {
      if (area === 'cache-mounts' && file.name.endsWith('.lock')) continue;
      // Reading a squashfs image or a tar does not touch its mtime; its atime says when it was last read.
      const used = Math.max(file.mtime, file.atime);
      items.push({ area, paths: [file.path], bytes: file.bytes, count: 1, lastUsed: used, touched: used, garbage: isTemp(file.name) });
    }
  }
  return items;
}

/** The build cache: each layer with the entries naming it, as one item; lone entries, lone layers and temp files as garbage. */
async function scanBuildCache(dir: string, seen: Set<string>): Promise<Item[]> {
  const items: Item[] = [];
  const layers = new Map<string, { file: FileInfo; entries: FileInfo[] }>();
  for (const file of await files(join(dir, 'layers'), seen)) {
    if (isTemp(file.name) || !file.name.endsWith('.tar')) items.push(garbage(file));
    else layers.set(file.name.slice(0, -'.tar'.length), { file, entries: [] });
  }
  for (const file of await files(join(dir, 'entries'), seen)) {
    const entry = isTemp(file.name) ? undefined : parseEntry(await readFile(file.path, 'utf8').catch(() => ''));
    const layer = entry && `${hex(entry.key)}.json` === file.name ? layers.get(hex(entry.diffId)) : undefined;
    if (layer) layer.entries.push(file);
    else items.push(garbage(file));
  }
  for (const { file, entries } of layers.values()) {
    if (entries.length === 0) {
      items.push(garbage(file));
      continue;
    }
    const used = Math.max(file.mtime, ...entries.map((entry) => entry.mtime));
    items.push({
      area: 'build-cache',
      paths: [...entries.map((entry) => entry.path), file.path],
      bytes: file.bytes + entries.reduce((sum, entry) => sum + entry.bytes, 0),
      count: entries.length,
      lastUsed: used,
      touched: used,
      garbage: false,
    });
  }
  return items;
}

/**
 * Each snapshot (a directory: memory, state, description) is one item, used when its description was
 * last touched (every restore touches it); a draft a crash left behind is garbage. Its size is the disk
 * space its files take: the memory file is sparse. A refusal marker is a few bytes, kept (it is what
 * stops dockvm from trying a snapshot QEMU refused, every run), and removed with --all.
 */
async function scanSnapshots(dir: string): Promise<Item[]> {
  const items: Item[] = [];
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const name of names.sort()) {
    const path = join(dir, name);
    const info = await stat(path).catch(() => undefined);
    if (!info) continue;
    if (!info.isDirectory()) {
      if (name.endsWith('.refused')) items.push({ area: 'snapshots', paths: [path], bytes: info.size, count: 1, lastUsed: Number.MAX_SAFE_INTEGER, touched: info.mtimeMs, garbage: false });
      continue;
    }
    let bytes = 0;
    for (const file of await readdir(path).catch(() => [] as string[])) {
      const part = await stat(join(path, file)).catch(() => undefined);
      if (part) bytes += part.blocks * 512;
    }
    const described = await stat(join(path, 'snapshot.json')).catch(() => undefined);
    const used = described ? Math.max(described.mtimeMs, described.atimeMs) : info.mtimeMs;
    items.push({ area: 'snapshots', paths: [path], bytes, count: 1, lastUsed: used, touched: used, garbage: name.startsWith('.') || described === undefined });
  }
  return items;
}

function garbage(file: FileInfo): Item {
  return { area: 'build-cache', paths: [file.path], bytes: file.bytes, count: 0, lastUsed: 0, touched: Math.max(file.mtime, file.atime), garbage: true };
}
