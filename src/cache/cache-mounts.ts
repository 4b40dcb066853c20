// RUN --mount=type=cache content kept between builds, as BuildKit keeps it: one tar per (id, platform) in
// CACHE/cache-mounts (DOCKVM_CACHE_MOUNTS_DIR overrides), named by a hash of both. The executor puts a
// stored tar on a stage's inputs disk, the guest unpacks it before the first step that mounts it, and
// after the stage's last step the guest tars the directory back onto the output disk; keep() reads that
// tar as untrusted input (the guest wrote it) and stores what it read under the name by an atomic rename.
// The content never enters a layer or a build cache key.
//
// sharing=locked holds KEY.lock (created exclusively, holding the pid) from before the VM starts until
// the write-back; another build waits for it. sharing=private takes the lock when it is free and
// otherwise starts empty and keeps nothing. sharing=shared takes no lock: the last build to finish wins.
// A lock whose process is gone is taken over. `dockvm cache prune` bounds the tars (src/cache/prune.ts).
// A cache seeded by from= is kept under its id joined with its seed's digest (the executor names it).
import { createWriteStream } from 'node:fs';
import { mkdir, open, readFile, rm, stat, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { UnsafeTarEntryError } from '../errors.js';
import { hex, sha256 } from '../image/digest.js';
import { printable, readTar, TarWriter } from '../layer/tar.js';
import { writeAtomically } from '../output.js';
import { cacheDir } from '../cache-dir.js';
import { canonicalJson } from './canonical-json.js';

/** Where cache mounts are kept: DOCKVM_CACHE_MOUNTS_DIR, else cache-mounts/ in dockvm's cache directory. */
export function cacheMountsDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.DOCKVM_CACHE_MOUNTS_DIR || join(cacheDir(env), 'cache-mounts');
}

/** How often a build waiting for a locked cache mount looks again. */
const LOCK_POLL_MS = 200;

export interface CacheMountLock {
  release(): Promise<void>;
}

export class CacheMountStore {
  constructor(readonly dir: string = cacheMountsDir()) {}

  /** The stored tar of (id, platform), whether or not it exists. */
  path(id: string, platform: string): string {
    return join(this.dir, `${hex(sha256(canonicalJson({ id, platform })))}.tar`);
  }

  /** The stored tar, touched (prune drops the least recently used first); undefined when none is kept. */
  async open(id: string, platform: string): Promise<string | undefined> {
    const path = this.path(id, platform);
    const info = await stat(path).catch(() => undefined);
    if (!info?.isFile()) return undefined;
    const now = new Date();
    await utimes(path, now, now).catch(() => undefined);
    return path;
  }

  /**
   * The lock of (id, platform). `wait` (sharing=locked): until it is free, calling `onWait` once with the
   * holder's pid; otherwise (sharing=private) undefined when another build holds it.
   */
  async lock(id: string, platform: string, options: { wait: boolean; signal?: AbortSignal; onWait?: (pid: number) => void }): Promise<CacheMountLock | undefined> {
    await mkdir(this.dir, { recursive: true });
    const path = `${this.path(id, platform)}.lock`;
    let told = false;
    for (;;) {
      options.signal?.throwIfAborted();
      try {
        const file = await open(path, 'wx');
        try {
          await file.writeFile(`${process.pid}\n`);
        } finally {
          await file.close();
        }
        return { release: () => rm(path, { force: true }) };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const holder = Number.parseInt(await readFile(path, 'utf8').catch(() => ''), 10);
      if (Number.isSafeInteger(holder) && !isAlive(holder)) {
        // its build is gone (killed): the lock is stale
        await rm(path, { force: true });
        continue;
      }
      if (!options.wait) return undefined;
      if (!told && Number.isSafeInteger(holder)) options.onWait?.(holder);
      told = true;
      await sleep(LOCK_POLL_MS, undefined, options.signal ? { signal: options.signal } : {});
    }
  }

  /**
   * Keep the tar `open` reads (a cache mount's directory, from the build VM) as the content of (id,
   * platform). It is read as untrusted, twice: first checked whole (a path that is absolute or has "..",
   * a hard link to no earlier entry, a corrupt or truncated tar are refused, an UnsafeTarEntryError or
   * TarFormatError, and the stored content stays), then what was checked is written anew.
   */
  async keep(id: string, platform: string, open: () => Readable): Promise<void> {
    const source = `the build VM's cache mount id=${id}`;
    const seen = new Set<string>();
    for await (const { entry } of readTar(open(), { source })) {
      if (entry.type === 'link' && !seen.has(entry.linkname!)) {
        throw new UnsafeTarEntryError(`${source}: hard link ${printable(entry.path)} points to ${printable(entry.linkname!)}, which is not an earlier entry`, { source, entry: entry.path });
      }
      seen.add(entry.path);
    }
    await mkdir(this.dir, { recursive: true });
    await writeAtomically(this.path(id, platform), async (temp) => {
      const writer = new TarWriter();
      const written = pipeline(writer.stream, createWriteStream(temp));
      written.catch(() => undefined); // awaited below; an error of the reader comes first
      try {
        for await (const { entry, body } of readTar(open(), { source })) {
          // metadata a cache needs, nothing more: no xattrs, numeric owners
          const { xattrs: _xattrs, uname: _uname, gname: _gname, ...kept } = entry;
          await writer.add(kept, entry.type === 'file' ? body : undefined);
        }
      } catch (err) {
        writer.destroy(err as Error);
        throw err;
      }
      writer.finish();
      await written;
    });
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
