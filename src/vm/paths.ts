// Where the guest-side assets (vm/, kernel/) shipped in the package are: looked up the same way from
// src/ (tsx) and from dist/src/ (compiled); and where a host program on PATH is. (The per-user cache is
// src/cache-dir.ts.)
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let root: string | undefined;

/** The package's root directory (the one whose package.json is named dockvm). */
export function packageRoot(): string {
  if (root !== undefined) return root;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest) && (JSON.parse(readFileSync(manifest, 'utf8')) as { name?: string }).name === 'dockvm') {
      root = dir;
      return dir;
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`cannot find dockvm's package.json above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
}

/** A file of the guest side, e.g. `assetPath('vm', 'agent.c')`. */
export function assetPath(...parts: string[]): string {
  return join(packageRoot(), ...parts);
}

/** `name` as spawn (execvp) finds it: the first executable file of that name along PATH, or undefined. */
export function findOnPath(name: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  for (const dir of (env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue;
    const path = join(dir, name);
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {
      // not here
    }
  }
  return undefined;
}
