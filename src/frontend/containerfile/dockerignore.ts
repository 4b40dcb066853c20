// .dockerignore: which context paths a build never sees. The file is read as Docker reads it
// (moby/patternmatcher's ignorefile: "#" at the start of a line is a comment, whitespace trimmed,
// paths cleaned and made relative, "!" exceptions); matching is @balena/dockerignore's, which follows
// Docker's rules (the last matching pattern wins, a matched directory hides what is below it unless an
// exception names it, "**" spans directories). BuildKit looks for `<Containerfile>.dockerignore` beside
// the Containerfile first, then `.dockerignore` at the context root; so does dockvm.
import dockerignoreModule from '@balena/dockerignore';
import { readFile } from 'node:fs/promises';
import { basename, dirname, join, posix } from 'node:path';

/** The .dockerignore that applies, and its patterns (normalised), or none. */
export async function readIgnoreFile(contextDir: string, containerfile: string): Promise<{ file?: string; patterns: string[] }> {
  for (const candidate of [join(dirname(containerfile), `${basename(containerfile)}.dockerignore`), join(contextDir, '.dockerignore')]) {
    let text: string;
    try {
      text = await readFile(candidate, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    return { file: candidate, patterns: parseIgnorePatterns(text) };
  }
  return { patterns: [] };
}

export function parseIgnorePatterns(text: string): string[] {
  const patterns: string[] = [];
  for (const [index, rawLine] of text.split(/\r?\n/).entries()) {
    const line = index === 0 ? rawLine.replace(/^\uFEFF/, '') : rawLine;
    if (line.startsWith('#')) continue;
    let pattern = line.trim();
    if (pattern === '') continue;
    const invert = pattern.startsWith('!');
    if (invert) pattern = pattern.slice(1).trim();
    if (pattern !== '') {
      pattern = posix.normalize(pattern).replace(/\/+$/, '') || '/';
      if (pattern.length > 1 && pattern.startsWith('/')) pattern = pattern.slice(1);
    }
    patterns.push(invert ? `!${pattern}` : pattern);
  }
  return patterns;
}

/** A predicate: is this context-relative path (no leading "./", "/" separators) left out? */
export type IgnoreMatcher = (path: string) => boolean;

// a CommonJS module whose exports are the factory, with `.default` pointing to it for TypeScript
const dockerignore = dockerignoreModule.default;

export function ignoreMatcher(patterns: readonly string[]): IgnoreMatcher {
  if (patterns.length === 0) return () => false;
  const matcher = dockerignore({ ignorecase: false }).add([...patterns]);
  return (path) => path !== '' && path !== '.' && matcher.ignores(path);
}
