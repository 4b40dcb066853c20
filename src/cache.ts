// dockvm's cache directory: $DOCKVM_CACHE, else $XDG_CACHE_HOME/dockvm, else ~/.cache/dockvm.
// Entries are content-addressed and written atomically (temp + rename), so builds can share it.
import { homedir } from 'node:os';
import { join } from 'node:path';

export function cacheDir(): string {
  if (process.env.DOCKVM_CACHE) return process.env.DOCKVM_CACHE;
  if (process.env.XDG_CACHE_HOME) return join(process.env.XDG_CACHE_HOME, 'dockvm');
  return join(homedir(), '.cache', 'dockvm');
}
