// Files written atomically: a temp file beside the target, renamed at the end; on failure nothing is
// left. "-" is stdout. Every archive, layout, lock and export dockvm writes goes through here.
import { createWriteStream } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import type { Readable, Writable } from 'node:stream';
import { removeOnExit } from './cleanup.js';

/**
 * Write a file atomically: `produce` gets a temp path in the same directory; it is renamed to `path`
 * only when `produce` resolves, and removed otherwise.
 */
export async function writeAtomically<T>(path: string, produce: (tempPath: string) => Promise<T>): Promise<T> {
  const temp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  // Ctrl-C while it is being written removes it too.
  const release = removeOnExit(temp);
  try {
    const result = await produce(temp);
    await rename(temp, path);
    return result;
  } catch (err) {
    await rm(temp, { recursive: true, force: true });
    throw err;
  } finally {
    release();
  }
}

export interface WriteOutputOptions {
  /** runs once every byte is in the temp file, before it takes its place: throwing leaves nothing written */
  beforeCommit?: () => void | Promise<void>;
}

/** Stream `data` to `path` atomically, or to stdout when path is "-". */
export async function writeOutput(path: string, data: () => Promise<Readable> | Readable, options: WriteOutputOptions = {}): Promise<void> {
  if (path === '-') {
    await pipeline(await data(), process.stdout as Writable, { end: false });
    await options.beforeCommit?.();
    return;
  }
  await writeAtomically(path, async (temp) => {
    await pipeline(await data(), createWriteStream(temp, { mode: 0o644 }));
    await options.beforeCommit?.();
  });
}
