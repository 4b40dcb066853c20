// Everything dockvm must undo before it exits — temp directories, QEMU processes — is registered here,
// so that an error, Ctrl-C or SIGTERM undoes it too. Only the CLI entry installs the signal handlers; a
// library caller that wants the same calls installSignalHandlers() itself.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

type Cleanup = () => Promise<void> | void;

const cleanups = new Set<Cleanup>();

/** Register `cleanup` to run on a signal; returns a function that unregisters it. */
export function onCleanup(cleanup: Cleanup): () => void {
  cleanups.add(cleanup);
  return () => cleanups.delete(cleanup);
}

/** Run every registered cleanup once (newest first), waiting at most `timeoutMs`. */
export async function runCleanups(timeoutMs = 2000): Promise<void> {
  const pending = [...cleanups].reverse();
  cleanups.clear();
  const all = Promise.allSettled(pending.map(async (cleanup) => cleanup()));
  await Promise.race([all, new Promise((resolve) => setTimeout(resolve, timeoutMs).unref())]);
}

/** A private temp directory for `fn`, removed afterwards — also when fn fails or a signal arrives. */
export async function withTempDir<T>(prefix: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(process.env.DOCKVM_TMPDIR ?? tmpdir(), `dockvm-${prefix}-`));
  const remove = () => rm(dir, { recursive: true, force: true });
  const unregister = onCleanup(remove);
  try {
    return await fn(dir);
  } finally {
    unregister();
    await remove();
  }
}

let installed = false;

/** On SIGINT/SIGTERM/SIGHUP: run the cleanups, then exit as the signal would (128 + its number). */
export function installSignalHandlers(): void {
  if (installed) return;
  installed = true;
  const numbers: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };
  for (const signal of Object.keys(numbers) as NodeJS.Signals[]) {
    process.once(signal, () => {
      process.stderr.write(`\ndockvm: ${signal === 'SIGINT' ? 'interrupted' : `got ${signal}`}; cleaning up\n`);
      void runCleanups().finally(() => process.exit(128 + numbers[signal]!));
    });
  }
}
