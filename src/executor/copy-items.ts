// What a COPY or ADD puts at its destination, as items relative to it, from the build context (the
// plan already selected those entries), from another stage or an image (selected here, in that image's
// merged filesystem, by the same rules: src/frontend/containerfile/context.ts), from heredocs and
// downloads. ADD unpacks a named local archive into the destination. The host writes the items as one
// tar (copy-input.ts); the guest unpacks it at the destination through the image's symlinks.
import { createReadStream } from 'node:fs';
import { lstat, open, readlink } from 'node:fs/promises';
import { join, posix } from 'node:path';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { execa } from 'execa';
import type { Inode } from '../flatten/merge.js';
import { readTar, type EntryType, type TarEntry } from '../layer/tar.js';
import type { CopyStep } from '../plan/plan.js';
import { componentPattern, hasWildcard } from '../frontend/containerfile/context.js';
import { BuildStepError } from './errors.js';
import type { ImageTree } from './image-tree.js';
import type { Download } from './downloads.js';

export interface CopyItem {
  /** path relative to the destination; "" is the destination itself (a named directory's own metadata) */
  target: string;
  /** type, mode, owner, size, mtime, link target (symlinks) or linked path (hard links, as a target) */
  entry: Omit<TarEntry, 'path'>;
  /** a regular file's content */
  content?: () => Buffer | Readable | Promise<Buffer | Readable>;
}

/** How the items land: inside the destination directory, or, for one file, as the destination itself unless it is a directory. */
export interface CopyLayout {
  /** the one file's name when the destination may name the file itself ("COPY a.txt /b.txt") */
  single?: string;
  /** the items include the destination's own metadata (a named directory): used when the guest makes the destination */
  rootMetadata: boolean;
}

export interface CopySources {
  contextDir: string;
  /** the merged filesystem of the stage or image `--from` names */
  tree?: ImageTree;
  /** ADD URL downloads, in the step's order */
  downloads: readonly Download[];
}

/** The layout of a step's items, known before they are produced. */
export async function copyLayout(step: CopyStep, sources: CopySources): Promise<CopyLayout> {
  if (step.from.kind === 'context') {
    const named = step.entries.filter((e) => e.named);
    const sourceCount = step.patterns.length + step.inlineFiles.length + step.urls.length;
    const rootMetadata = named.some((e) => e.type === 'directory');
    if (!step.destIsDir && sourceCount === 1) {
      const only = named[0];
      if (named.length === 1 && only!.type !== 'directory' && only!.target === '') {
        const unpacked = step.unpack && only!.type === 'file' && (await archiveKind(join(sources.contextDir, only!.source))) !== undefined;
        return unpacked ? { rootMetadata: false } : { single: posix.basename(only!.source), rootMetadata: false };
      }
      if (step.inlineFiles.length === 1) return { single: step.inlineFiles[0]!.path, rootMetadata: false };
      if (step.urls.length === 1) {
        const unpacked = step.urls[0]!.unpack && (await archiveKind(sources.downloads[0]!.path)) !== undefined;
        if (!unpacked) return { single: step.urls[0]!.filename, rootMetadata: false };
      }
    }
    return { rootMetadata };
  }
  const tree = sources.tree!;
  const matches = selectInTree(tree, treeRequest(step));
  if (!step.destIsDir && matches.length === 1 && !tree.isDirectory(matches[0]!.real)) return { single: posix.basename(matches[0]!.real), rootMetadata: false };
  return { rootMetadata: matches.some((m) => tree.isDirectory(m.real)) };
}

/** Every item of the step, in order (parents before children; a later item for the same target wins). */
export async function* copyItems(step: CopyStep, sources: CopySources, layout: CopyLayout): AsyncGenerator<CopyItem> {
  if (step.from.kind === 'context') {
    for (const entry of step.entries) {
      const path = join(sources.contextDir, entry.source);
      if (step.unpack && entry.named && entry.type === 'file') {
        const kind = await archiveKind(path);
        if (kind) {
          yield* archiveItems(path, kind, entry.source);
          continue;
        }
      }
      const target = layout.single !== undefined ? layout.single : entry.target;
      yield await contextItem(path, target);
    }
  } else {
    yield* treeItems(sources.tree!, treeRequest(step), layout);
  }
  for (const file of step.inlineFiles) {
    const data = Buffer.from(file.data);
    yield { target: file.path, entry: { type: 'file', mode: file.mode, uid: 0, gid: 0, size: data.length, mtime: 0 }, content: () => data };
  }
  for (const [i, url] of step.urls.entries()) {
    const download = sources.downloads[i]!;
    if (url.unpack) {
      const kind = await archiveKind(download.path);
      if (kind) {
        yield* archiveItems(download.path, kind, url.url);
        continue;
      }
    }
    // Docker: a downloaded file is 0600, its mtime the server's Last-Modified
    yield {
      target: url.filename,
      entry: { type: 'file', mode: 0o600, uid: 0, gid: 0, size: download.size, mtime: download.mtime },
      content: () => createReadStream(download.path),
    };
  }
}

/** A context file, directory or symlink: root-owned, as Docker copies the context. */
export async function contextItem(path: string, target: string): Promise<CopyItem> {
  const stats = await lstat(path);
  const base = { mode: stats.mode & 0o7777, uid: 0, gid: 0, mtime: Math.floor(stats.mtimeMs / 1000) };
  if (stats.isSymbolicLink()) return { target, entry: { ...base, type: 'symlink', size: 0, linkname: (await readlink(path, { encoding: 'buffer' })).toString('latin1') } };
  if (stats.isDirectory()) return { target, entry: { ...base, type: 'directory', size: 0 } };
  return { target, entry: { ...base, type: 'file', size: stats.size }, content: () => createReadStream(path) };
}

type ArchiveKind = 'tar' | 'gzip' | 'bzip2' | 'xz';

/** What kind of archive a file is, by its first bytes (Docker's rule: the content decides, not the name). */
async function archiveKind(path: string): Promise<ArchiveKind | undefined> {
  const handle = await open(path, 'r');
  try {
    const head = Buffer.alloc(512);
    const { bytesRead } = await handle.read(head, 0, 512, 0);
    if (bytesRead >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
    if (bytesRead >= 3 && head.subarray(0, 3).toString('latin1') === 'BZh') return 'bzip2';
    if (bytesRead >= 6 && head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
    if (bytesRead === 512 && head.subarray(257, 262).toString('latin1') === 'ustar') return 'tar';
    return undefined;
  } finally {
    await handle.close();
  }
}

/** The entries of a local archive, relative to the destination, with the owners and modes it holds. */
async function* archiveItems(path: string, kind: ArchiveKind, written: string): AsyncGenerator<CopyItem> {
  let input: Readable = createReadStream(path);
  if (kind === 'gzip') input = input.pipe(createGunzip());
  else if (kind !== 'tar') {
    const child = execa(kind === 'bzip2' ? 'bzip2' : 'xz', ['-dc'], { inputFile: path, stdout: 'pipe', buffer: false });
    child.catch(() => undefined); // a failure shows as a truncated tar below
    input = child.stdout!;
  }
  try {
    for await (const { entry, body } of readTar(input, { source: `ADD ${written}` })) {
      if (entry.path === '') continue;
      const { path: target, uname: _u, gname: _g, ...rest } = entry;
      yield entry.type === 'file' && entry.size > 0 ? { target, entry: rest, content: () => body } : { target, entry: rest };
    }
  } catch (err) {
    throw new BuildStepError(`ADD ${written}: cannot unpack the archive: ${(err as Error).message}`, { cause: err });
  }
}

// --- selection in an image's filesystem ---------------------------------------------------------------

interface TreeMatch {
  /** the path as the pattern matched it (before symlinks were followed) */
  written: string;
  /** the path after following symlinks */
  real: string;
}

const MAX_SYMLINKS = 40;

/** What to pick in an image's filesystem: absolute patterns (wildcards allowed), for messages the instruction. */
export interface TreeRequest {
  patterns: readonly string[];
  /** "COPY --from=build" */
  label: string;
}

function treeRequest(step: CopyStep): TreeRequest {
  const from = step.from.kind === 'stage' ? `stage ${step.from.stage}` : step.from.kind === 'image' ? step.from.ref : 'the context';
  return { patterns: step.patterns, label: `${step.instruction} --from (${from})` };
}

/** The paths the patterns name in the tree, symlinks followed within the image (Docker's rules). */
export function selectInTree(tree: ImageTree, step: TreeRequest): TreeMatch[] {
  const matches: TreeMatch[] = [];
  for (const pattern of step.patterns) {
    const clean = posix.normalize(pattern).replace(/^\/+/, '').replace(/\/+$/, '');
    const path = clean === '.' ? '' : clean;
    if (hasWildcard(path)) {
      for (const found of glob(tree, path)) matches.push({ written: found, real: follow(tree, found, pattern, step) });
    } else {
      matches.push({ written: path, real: follow(tree, path, pattern, step) });
    }
  }
  return matches;
}

/** Resolve symlinks along `path` inside the image: absolute links start again at the image's root. */
function follow(tree: ImageTree, path: string, written: string, step: TreeRequest): string {
  const parts = path === '' ? [] : path.split('/');
  const resolved: string[] = [];
  let hops = 0;
  while (parts.length > 0) {
    const part = parts.shift()!;
    if (part === '' || part === '.') continue;
    if (part === '..') {
      resolved.pop();
      continue;
    }
    const candidate = [...resolved, part].join('/');
    if (!tree.exists(candidate)) throw new BuildStepError(`${step.label}: "${written}" not found`);
    const winner = tree.get(candidate);
    if (winner?.inode.entry.type === 'symlink') {
      if (++hops > MAX_SYMLINKS) throw new BuildStepError(`${step.label}: "${written}": too many levels of symbolic links`);
      const target = winner.inode.entry.linkname ?? '';
      if (target.startsWith('/')) resolved.length = 0;
      parts.unshift(...target.split('/'));
      continue;
    }
    resolved.push(part);
  }
  return resolved.join('/');
}

function glob(tree: ImageTree, pattern: string): string[] {
  let current = [''];
  for (const part of pattern.split('/')) {
    const next: string[] = [];
    for (const dir of current) {
      if (!hasWildcard(part)) {
        next.push(dir === '' ? part : `${dir}/${part}`);
        continue;
      }
      if (!tree.isDirectory(dir)) continue;
      const re = componentPattern(part);
      for (const name of tree.children(dir)) if (re.test(name)) next.push(dir === '' ? name : `${dir}/${name}`);
    }
    current = next;
  }
  return current.filter((path) => tree.exists(path));
}

export function* treeItems(tree: ImageTree, step: TreeRequest, layout: CopyLayout): Generator<CopyItem> {
  // paths sharing an inode are one hard-link group: the first copied carries the content
  const linked = new Map<Inode, string>();
  const item = (path: string, target: string): CopyItem => {
    const winner = tree.get(path);
    if (!winner) return { target, entry: { type: 'directory', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 0 } };
    const { inode } = winner;
    const { path: _p, uname: _u, gname: _g, ...entry } = inode.entry;
    if (entry.type === 'file') {
      const first = linked.get(inode);
      if (first !== undefined) return { target, entry: { ...entry, type: 'link', size: 0, linkname: first } };
      if (inode.linked) linked.set(inode, target);
      return { target, entry, content: () => tree.read(inode) };
    }
    return { target, entry: entry as CopyItem['entry'] };
  };
  function* walk(dir: string, target: string): Generator<CopyItem> {
    for (const name of tree.children(dir)) {
      const path = dir === '' ? name : `${dir}/${name}`;
      const into = target === '' ? name : `${target}/${name}`;
      yield item(path, into);
      if (tree.get(path)?.inode.entry.type === 'directory' || (!tree.get(path) && tree.isDirectory(path))) yield* walk(path, into);
    }
  }
  for (const match of selectInTree(tree, step)) {
    if (tree.isDirectory(match.real)) {
      yield item(match.real, '');
      yield* walk(match.real, '');
    } else {
      const target = layout.single ?? posix.basename(match.written === '' ? match.real : match.written);
      yield item(match.real, target);
    }
  }
}

export type { EntryType };
