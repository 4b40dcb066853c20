// Where dockvm keeps things: the per-user cache, and the guest-side assets (vm/, kernel/) shipped in the
// package. Both are looked up the same way from src/ (tsx) and from dist/src/ (compiled).
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** `$DOCKVM_CACHE`, else `$XDG_CACHE_HOME/dockvm`, else `~/.cache/dockvm`. */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.DOCKVM_CACHE) return env.DOCKVM_CACHE;
  if (env.XDG_CACHE_HOME) return join(env.XDG_CACHE_HOME, 'dockvm');
  return join(homedir(), '.cache', 'dockvm');
}

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
