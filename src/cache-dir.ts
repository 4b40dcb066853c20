// Where dockvm's per-user cache lives. Its own module because the layer, transport and VM code all keep
// things there (squashfs images, tars, gzip digests, kernel, initramfs, agent, the KVM verdict), and none
// of them should reach into another's folder for it.
import { homedir } from 'node:os';
import { join } from 'node:path';

/** `$DOCKVM_CACHE`, else `$XDG_CACHE_HOME/dockvm`, else `~/.cache/dockvm`. */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.DOCKVM_CACHE) return env.DOCKVM_CACHE;
  if (env.XDG_CACHE_HOME) return join(env.XDG_CACHE_HOME, 'dockvm');
  return join(homedir(), '.cache', 'dockvm');
}
