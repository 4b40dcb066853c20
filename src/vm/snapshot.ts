// Snapshots of a booted, idle build VM, kept in the cache: a guest that reached its agent, saved once, is
// restored for each build instead of booted (DESIGN.md, "The VM"). A snapshot is two files: the guest's
// RAM as it was (the memory-backend file it booted with, which a restored QEMU maps privately) and its
// device state (QEMU's migration stream without the RAM: x-ignore-shared). Its key is everything the
// saved guest depends on: the QEMU arguments of the VM that was saved (its device model: machine, CPU,
// memory size, vCPUs, accel, devices, kernel command line), QEMU's version, the kernel and the initramfs
// by content, and under KVM the host's CPU. A snapshot is checked before use (its description, the size
// of its memory, the digest of its state); one that fails a check, or that QEMU refuses, is not used.
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { cacheDir } from '../cache-dir.js';
import { removeOnExit } from '../cleanup.js';

/** Bump when what a snapshot holds or how it is checked changes: older ones are then not used. */
export const SNAPSHOT_FORMAT = 1;

export interface SnapshotKeyInputs {
  /** QEMU's version: the migration stream's format is QEMU's own */
  readonly qemuVersion: string;
  /** the arguments of the QEMU that is saved, with its per-run paths as placeholders */
  readonly args: readonly string[];
  /** sha256 of the kernel file booted */
  readonly kernelDigest: string;
  /** the initramfs's hash (initramfs.ts): init, agent, modules, tools */
  readonly initramfsHash: string;
  /** under KVM the guest runs on the host's CPU (-cpu host), whose features it probed at boot */
  readonly hostCpu?: string;
}

export function snapshotKey(inputs: SnapshotKeyInputs): string {
  const material = JSON.stringify([SNAPSHOT_FORMAT, inputs.qemuVersion, inputs.kernelDigest, inputs.initramfsHash, inputs.hostCpu ?? null, inputs.args]);
  return createHash('sha256').update(material).digest('hex').slice(0, 32);
}

/** A snapshot's files. */
export interface SnapshotFiles {
  readonly dir: string;
  /** the guest's RAM: memoryMiB MiB, sparse */
  readonly memory: string;
  /** QEMU's device state (the migration stream) */
  readonly state: string;
}

interface Description {
  readonly format: number;
  readonly key: string;
  readonly memoryBytes: number;
  readonly stateBytes: number;
  readonly stateSha256: string;
  readonly savedAt: string;
}

export type SnapshotLookup =
  | { readonly kind: 'ready'; readonly snapshot: SnapshotFiles }
  | { readonly kind: 'missing'; readonly dir: string }
  /** it is there but fails a check (damaged, cut short, from another dockvm): not to be used */
  | { readonly kind: 'unusable'; readonly dir: string; readonly reason: string }
  /** QEMU refused one made for this key before: booting is what works here */
  | { readonly kind: 'refused'; readonly marker: string; readonly reason: string };

/** `$DOCKVM_SNAPSHOT_DIR`, else CACHE/snapshots. */
export function snapshotsDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.DOCKVM_SNAPSHOT_DIR || join(cacheDir(env), 'snapshots');
}

function filesIn(dir: string): SnapshotFiles {
  return { dir, memory: join(dir, 'memory'), state: join(dir, 'state') };
}

const refusedMarker = (env: NodeJS.ProcessEnv, key: string) => join(snapshotsDir(env), `${key}.refused`);

/** The snapshot for `key`, checked: a guest of memoryMiB MiB whose state file is the one described. */
export async function findSnapshot(key: string, memoryMiB: number, env: NodeJS.ProcessEnv = process.env): Promise<SnapshotLookup> {
  const marker = refusedMarker(env, key);
  const refusal = await readFile(marker, 'utf8').catch(() => undefined);
  if (refusal !== undefined) return { kind: 'refused', marker, reason: refusal.trim() || 'no reason recorded' };
  const files = filesIn(join(snapshotsDir(env), key));
  const text = await readFile(join(files.dir, 'snapshot.json'), 'utf8').catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? null : undefined));
  if (text === null) {
    const there = await stat(files.dir).then(() => true, () => false);
    return there ? { kind: 'unusable', dir: files.dir, reason: 'its description snapshot.json is missing' } : { kind: 'missing', dir: files.dir };
  }
  const unusable = (reason: string): SnapshotLookup => ({ kind: 'unusable', dir: files.dir, reason });
  let description: Description;
  try {
    description = JSON.parse(text ?? '') as Description;
  } catch {
    return unusable('its description snapshot.json is not JSON');
  }
  if (description.format !== SNAPSHOT_FORMAT || description.key !== key) return unusable(`it was saved by another dockvm (format ${description.format}, key ${description.key})`);
  const memoryBytes = memoryMiB * 1024 * 1024;
  const memory = await stat(files.memory).catch(() => undefined);
  if (memory?.size !== memoryBytes || description.memoryBytes !== memoryBytes) return unusable(`its memory file is ${memory ? `${memory.size} bytes` : 'missing'}, not ${memoryBytes}`);
  // The state is small (tens of KiB): hashing it costs nothing next to a restore. The memory is hundreds
  // of MiB and is not hashed: a damaged one makes a guest that does not answer, which counts as refused.
  const state = await readFile(files.state).catch(() => undefined);
  if (state === undefined) return unusable('its device state file is missing');
  if (state.length !== description.stateBytes || createHash('sha256').update(state).digest('hex') !== description.stateSha256) {
    return unusable('its device state does not match the digest it was saved with');
  }
  const now = new Date();
  await utimes(join(files.dir, 'snapshot.json'), now, now).catch(() => {}); // last used: prune keeps it longer
  return { kind: 'ready', snapshot: files };
}

/** Remove the snapshot for `key` and remember that QEMU refused it, with why. */
export async function refuseSnapshot(key: string, reason: string, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const marker = refusedMarker(env, key);
  await mkdir(snapshotsDir(env), { recursive: true });
  await writeFile(marker, `${reason.replace(/\s+/g, ' ').slice(0, 500)}\n`);
  await removeSnapshot(join(snapshotsDir(env), key));
  return marker;
}

export async function removeSnapshot(dir: string): Promise<void> {
  // A VM restored from it keeps its files open (the memory is mapped): removing them does not disturb it.
  await rm(dir, { recursive: true, force: true });
}

/** A snapshot being made: files in a temp directory of the snapshots folder, until commit() names it. */
export interface SnapshotDraft extends SnapshotFiles {
  /** describe it and give it its key's name (unless another process gave one that name meanwhile) */
  commit(key: string, memoryMiB: number): Promise<SnapshotFiles>;
  /** remove it, unless committed */
  discard(): Promise<void>;
}

export async function draftSnapshot(env: NodeJS.ProcessEnv = process.env): Promise<SnapshotDraft> {
  const dir = join(snapshotsDir(env), `.draft-${randomBytes(6).toString('hex')}.tmp`);
  const release = removeOnExit(dir);
  await mkdir(dir, { recursive: true });
  let committed = false;
  const files = filesIn(dir);
  return {
    ...files,
    async commit(key, memoryMiB) {
      const state = await readFile(files.state);
      const description: Description = {
        format: SNAPSHOT_FORMAT,
        key,
        memoryBytes: memoryMiB * 1024 * 1024,
        stateBytes: state.length,
        stateSha256: createHash('sha256').update(state).digest('hex'),
        savedAt: new Date().toISOString(),
      };
      await writeFile(join(dir, 'snapshot.json'), `${JSON.stringify(description, null, 2)}\n`);
      const final = join(snapshotsDir(env), key);
      try {
        await rename(dir, final);
        committed = true;
        release();
      } catch (err) {
        // another dockvm saved one for this key meanwhile (just as good): keep it, drop this one
        if ((err as NodeJS.ErrnoException).code !== 'ENOTEMPTY' && (err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      return filesIn(final);
    },
    async discard() {
      if (committed) return;
      await rm(dir, { recursive: true, force: true });
      release();
    },
  };
}
