// Which context files a COPY or ADD source picks, by Docker's (BuildKit's) rules:
// - a source is a path relative to the context root; wildcards (* ? [..], \ escaping) match per path
//   component; a wildcard that matches nothing copies nothing, a plain path that is missing is an error;
// - a named directory's contents are copied (not the directory itself), recursively; a named file goes
//   to dest/NAME when the destination is a directory, else to dest itself;
// - a symlink a source names (or passes through) is followed, but only within the context: a source
//   that leads outside it, by ".." or by a symlink, is refused; symlinks inside a copied directory are
//   copied as symlinks;
// - what .dockerignore leaves out is not there, except the directories above a file an exception keeps.
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join, posix } from 'node:path';
import type { CopyEntry } from '../../plan/plan.js';
import type { IgnoreMatcher } from './dockerignore.js';

export class ContextError extends Error {}

export interface Selection {
  /** the entries, parents before children, in the order the sources were given */
  entries: CopyEntry[];
  /** how many things the sources named (a wildcard matching three files counts three) */
  named: number;
  /** whether any source had a wildcard */
  wildcard: boolean;
}

type EntryType = CopyEntry['type'];

const MAX_SYMLINKS = 40;

export class BuildContextReader {
  constructor(
    readonly dir: string,
    private readonly ignored: IgnoreMatcher,
  ) {}

  /** The entries `sources` pick; `destIsDir` says where a named file lands (dest/NAME or dest). */
  async select(sources: readonly string[], destIsDir: (named: number, wildcard: boolean) => boolean): Promise<Selection> {
    const matched: { written: string; real: string; type: EntryType }[] = [];
    let wildcard = false;
    for (const source of sources) {
      const clean = this.relative(source);
      if (hasWildcard(clean)) {
        wildcard = true;
        for (const path of await this.glob(clean)) matched.push({ written: path, ...(await this.follow(path, source)) });
      } else {
        const found = await this.follow(clean, source);
        matched.push({ written: clean, ...found });
      }
    }
    const intoDir = destIsDir(matched.length, wildcard);
    const entries: CopyEntry[] = [];
    for (const m of matched) {
      if (m.type === 'directory') {
        entries.push({ source: m.real, target: '', type: 'directory', named: true });
        await this.walk(m.real, '', entries);
      } else {
        const target = intoDir ? posix.basename(m.written === '.' ? m.real : m.written) : '';
        entries.push({ source: m.real, target, type: m.type, named: true });
      }
    }
    return { entries, named: matched.length, wildcard };
  }

  /** A source as a clean context-relative path ("." for the root); ".." out of the context is refused. */
  relative(source: string): string {
    const normalized = posix.normalize(`./${source.replace(/^\/+/, '')}`);
    if (normalized === '..' || normalized.startsWith('../')) {
      throw new ContextError(`"${source}" is outside the build context; sources are relative to the context directory ${this.dir}`);
    }
    return normalized === './' ? '.' : normalized.replace(/\/$/, '');
  }

  /** Resolve symlinks along a path, within the context; the result's real path and type. */
  private async follow(path: string, written: string): Promise<{ real: string; type: EntryType }> {
    const parts = path === '.' ? [] : path.split('/');
    const resolved: string[] = [];
    let hops = 0;
    while (parts.length > 0) {
      const part = parts.shift()!;
      if (part === '.' || part === '') continue;
      if (part === '..') {
        if (resolved.length === 0) throw this.outside(written);
        resolved.pop();
        continue;
      }
      const candidate = [...resolved, part].join('/');
      if (this.ignored(candidate) && !(await this.keepsSomething(candidate))) throw this.missing(written);
      let stat;
      try {
        stat = await lstat(join(this.dir, candidate));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') throw this.missing(written);
        throw err;
      }
      if (stat.isSymbolicLink()) {
        if (++hops > MAX_SYMLINKS) throw new ContextError(`"${written}": too many levels of symbolic links`);
        const target = await readlink(join(this.dir, candidate));
        if (target.startsWith('/')) throw this.outside(written, `${candidate} -> ${target}`);
        parts.unshift(...target.split('/'));
        continue;
      }
      resolved.push(part);
    }
    const real = resolved.length === 0 ? '.' : resolved.join('/');
    const stat = await lstat(join(this.dir, real));
    return { real, type: this.typeOf(stat, real) };
  }

  private typeOf(stat: import('node:fs').Stats, path: string): EntryType {
    if (stat.isDirectory()) return 'directory';
    if (stat.isFile()) return 'file';
    if (stat.isSymbolicLink()) return 'symlink';
    const what = stat.isFIFO() ? 'a FIFO' : stat.isSocket() ? 'a socket' : 'a device node';
    throw new ContextError(`the build context holds ${what} at "${path}": COPY and ADD copy regular files, directories and symlinks; add it to .dockerignore (or make it in a RUN step)`);
  }

  /** Everything below a directory, parents first, names in byte order, .dockerignore applied. */
  private async walk(dir: string, target: string, entries: CopyEntry[]): Promise<void> {
    const names = (await readdir(join(this.dir, dir))).sort(byteOrder);
    for (const name of names) {
      const source = dir === '.' ? name : `${dir}/${name}`;
      const into = target === '' ? name : `${target}/${name}`;
      const stat = await lstat(join(this.dir, source));
      const type = this.typeOf(stat, source);
      if (this.ignored(source)) {
        // an ignored directory still holds what an exception keeps; it is there as their parent
        if (type !== 'directory' || !(await this.keepsSomething(source))) continue;
      }
      entries.push({ source, target: into, type, named: false });
      if (type === 'directory') await this.walk(source, into, entries);
    }
  }

  /** Whether an ignored directory has something below it that an exception brings back. */
  private async keepsSomething(dir: string): Promise<boolean> {
    let names: string[];
    try {
      names = await readdir(join(this.dir, dir));
    } catch {
      return false;
    }
    for (const name of names) {
      const path = `${dir}/${name}`;
      if (!this.ignored(path)) return true;
      const stat = await lstat(join(this.dir, path));
      if (stat.isDirectory() && (await this.keepsSomething(path))) return true;
    }
    return false;
  }

  /** The context paths a wildcard pattern matches, in byte order, ignored ones left out. */
  private async glob(pattern: string): Promise<string[]> {
    const parts = pattern.split('/');
    let current: string[] = ['.'];
    for (const part of parts) {
      const next: string[] = [];
      for (const dir of current) {
        if (!hasWildcard(part)) {
          const path = dir === '.' ? part : `${dir}/${part}`;
          next.push(path);
          continue;
        }
        let names: string[];
        try {
          const stat = await lstat(join(this.dir, dir));
          if (!stat.isDirectory()) continue;
          names = (await readdir(join(this.dir, dir))).sort(byteOrder);
        } catch {
          continue;
        }
        const re = componentPattern(part);
        for (const name of names) {
          if (re.test(name)) next.push(dir === '.' ? name : `${dir}/${name}`);
        }
      }
      current = next;
    }
    const found: string[] = [];
    for (const path of current) {
      try {
        await lstat(join(this.dir, path));
      } catch {
        continue;
      }
      if (this.ignored(path) && !(await this.keepsSomething(path))) continue;
      found.push(path);
    }
    return found;
  }

  private missing(source: string): ContextError {
    return new ContextError(`"${source}" not found in the build context ${this.dir} (or left out by .dockerignore)`);
  }

  private outside(source: string, via?: string): ContextError {
    const how = via ? ` (through the symlink ${via})` : '';
    return new ContextError(`"${source}" leads outside the build context${how}; sources must be inside ${this.dir}`);
  }
}

function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/** Whether a path has an unescaped * ? or [ (BuildKit's containsWildcards). */
export function hasWildcard(path: string): boolean {
  for (let i = 0; i < path.length; i++) {
    const ch = path[i];
    if (ch === '\\') i++;
    else if (ch === '*' || ch === '?' || ch === '[') return true;
  }
  return false;
}

/** Go's filepath.Match for one path component, as a RegExp. */
export function componentPattern(pattern: string): RegExp {
  let out = '^';
  for (let i = 0; i < pattern.length; i++) {
    const ch = pattern[i]!;
    if (ch === '*') out += '[^/]*';
    else if (ch === '?') out += '[^/]';
    else if (ch === '\\') {
      i++;
      out += escapeRegex(pattern[i] ?? '\\');
    } else if (ch === '[') {
      const close = pattern.indexOf(']', i + 2);
      if (close < 0) throw new ContextError(`syntax error in pattern "${pattern}": unterminated [`);
      let body = pattern.slice(i + 1, close);
      const negate = body.startsWith('^');
      if (negate) body = body.slice(1);
      out += `[${negate ? '^' : ''}${body.replace(/\\(.)/g, (_, c: string) => escapeRegex(c)).replace(/[[\]^]/g, (c) => `\\${c}`)}]`;
      i = close;
    } else out += escapeRegex(ch);
  }
  return new RegExp(`${out}$`, 'u');
}

function escapeRegex(ch: string): string {
  return ch.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}
