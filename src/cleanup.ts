// Temp directories dockvm must remove before it exits are registered here, so that an error, Ctrl-C or
// SIGTERM removes them too. (QEMU processes and their temp dirs have the same guard in src/vm/cleanup.ts.)
// Signal-time cleanups are synchronous: the process is about to end and no promise would be awaited.
// Only the CLI entry installs the signal handlers; a library caller that wants them calls
// installSignalHandlers() itself.
import { rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const tempDirs = new Set<string>();

/** A private temp directory for `fn`, removed afterwards — also when fn fails or a signal arrives. */
export async function withTempDir<T>(prefix: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(process.env.DOCKVM_TMPDIR ?? tmpdir(), `dockvm-${prefix}-`));
  tempDirs.add(dir);
  try {
    return await fn(dir);
  } finally {
    tempDirs.delete(dir);
    await rm(dir, { recursive: true, force: true });
  }
}

/** Remove every temp directory still registered (on a signal). */
export function removeTempDirsNow(): void {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
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
      removeTempDirsNow();
      process.stderr.write(`\ndockvm: ${signal === 'SIGINT' ? 'interrupted' : `stopped by ${signal}`}; cleaned up\n`);
      process.exit(128 + numbers[signal]!);
    });
  }
}
