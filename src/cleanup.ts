// Temp directories (and outputs being written, not yet in place) dockvm must remove before it exits are
// registered here, so that an error, Ctrl-C or SIGTERM removes them too. (QEMU processes and their temp
// dirs have the same guard in src/vm/cleanup.ts.)
// Signal-time cleanups are synchronous: the process is about to end and no promise would be awaited.
// Only the CLI entry installs the signal handlers; a library caller that wants them calls
// installSignalHandlers() itself.
import { rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Temp directories and files (an output not yet renamed into place) to remove if a signal ends the process. */
const pending = new Set<string>();

/** Have `path` removed if a signal ends the process before the returned release is called. */
export function removeOnSignal(path: string): () => void {
  pending.add(path);
  return () => {
    pending.delete(path);
  };
}

export interface TempDir {
  path: string;
  /** remove it (and stop guarding it) */
  remove(): Promise<void>;
}

/**
 * A new private temp directory (DOCKVM_TMPDIR, else the system's), removed if a signal ends the process.
 * Its name is registered before the directory is made, so there is no moment when it is on disk and
 * unknown to the signal handler (as there is between mkdtemp's making it and its promise resolving).
 */
export async function createTempDir(prefix: string): Promise<TempDir> {
  const base = process.env.DOCKVM_TMPDIR ?? tmpdir();
  for (;;) {
    const path = join(base, `dockvm-${prefix}-${randomBytes(6).toString('hex')}`);
    const release = removeOnSignal(path);
    try {
      await mkdir(path, { mode: 0o700 });
    } catch (err) {
      release();
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') continue;
      throw err;
    }
    return {
      path,
      remove: async () => {
        await rm(path, { recursive: true, force: true });
        release();
      },
    };
  }
}

/** A private temp directory for `fn`, removed afterwards — also when fn fails or a signal arrives. */
export async function withTempDir<T>(prefix: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await createTempDir(prefix);
  try {
    return await fn(dir.path);
  } finally {
    await dir.remove();
  }
}

/** Remove every temp directory and file still registered (on a signal). */
export function removePendingNow(): void {
  for (const path of pending) rmSync(path, { recursive: true, force: true });
  pending.clear();
}

let installed = false;

/**
 * On SIGINT/SIGTERM/SIGHUP: remove temp dirs, say so, exit as the signal would (128 + its number). The
 * exit also runs the 'exit' hooks of QEMU's guard (src/vm/cleanup.ts) and of tmp-promise's spools.
 */
export function installSignalHandlers(): void {
  if (installed) return;
  installed = true;
  const numbers: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };
  for (const signal of Object.keys(numbers) as NodeJS.Signals[]) {
    process.once(signal, () => {
      removePendingNow();
      process.stderr.write(`\ndockvm: ${signal === 'SIGINT' ? 'interrupted' : `stopped by ${signal}`}; cleaned up\n`);
      process.exit(128 + numbers[signal]!);
    });
  }
}
