// Everything dockvm must undo before it exits is registered here, in one registry: QEMU processes, the
// VMs' temp dirs, temp directories, outputs being written and not yet in place. Whatever ends the
// process (success, an error, process.exit, SIGINT/SIGTERM/SIGHUP) undoes what is still registered.
// Undoing is synchronous: the process is about to end and no promise would be awaited.
// Signals: while anything is registered, a guard handler undoes it all, removes itself and re-raises
// the signal, so that the default action (or an embedder's own handler) applies; a library caller gets
// that without asking. The CLI entry installs its own handlers instead (installSignalHandlers()).
import { rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { timePhase } from './timing.js';

/** What to undo if the process ends now, in the order it was registered (QEMU killed before its dir goes). */
const pending = new Set<{ undo: () => void }>();
const SIGNALS: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
let guarded = false;

/** Have `undo` run if the process ends before the returned release is called. */
export function onExit(undo: () => void): () => void {
  const entry = { undo };
  pending.add(entry);
  guard();
  return () => {
    pending.delete(entry);
    if (pending.size === 0) unguard();
  };
}

/** Have `path` (a temp dir, an output not yet renamed into place) removed if the process ends before release. */
export function removeOnExit(path: string): () => void {
  return onExit(() => rmSync(path, { recursive: true, force: true }));
}

/** Have the process `pid()` names (while it may still run) killed if this one ends before release. */
export function killOnExit(pid: () => number | undefined): () => void {
  return onExit(() => {
    const running = pid();
    if (running === undefined) return;
    try {
      process.kill(running, 'SIGKILL');
    } catch {
      // already gone
    }
  });
}

/** Undo everything still registered (at exit, on a signal). */
function undoPendingNow(): void {
  for (const entry of pending) entry.undo();
  pending.clear();
  unguard();
}

function onGuardedSignal(signal: NodeJS.Signals): void {
  undoPendingNow();
  // re-raise: with our handler gone, the default action (or the embedder's own handler) applies
  process.kill(process.pid, signal);
}

function guard(): void {
  if (guarded) return;
  guarded = true;
  for (const signal of SIGNALS) process.on(signal, onGuardedSignal);
  process.on('exit', undoPendingNow);
}

function unguard(): void {
  if (!guarded) return;
  guarded = false;
  for (const signal of SIGNALS) process.off(signal, onGuardedSignal);
  process.off('exit', undoPendingNow);
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
    const release = removeOnExit(path);
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
    await timePhase(`temp dir removed (${prefix})`, () => dir.remove());
  }
}

let installed = false;

/**
 * The CLI's handlers, installed first: on SIGINT/SIGTERM/SIGHUP undo everything registered, say so, exit
 * as the signal would (128 + its number). The exit also runs the 'exit' hooks of tmp-promise's spools.
 */
export function installSignalHandlers(): void {
  if (installed) return;
  installed = true;
  const numbers: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };
  for (const signal of Object.keys(numbers) as NodeJS.Signals[]) {
    process.once(signal, () => {
      undoPendingNow();
      process.stderr.write(`\ndockvm: ${signal === 'SIGINT' ? 'interrupted' : `stopped by ${signal}`}; cleaned up\n`);
      process.exit(128 + numbers[signal]!);
    });
  }
}
