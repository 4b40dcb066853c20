// SPEC.lock.json: what the last successful refresh of a spec built from — the base image's digest and a
// hash of every other input — and what it wrote. Written with a fixed key order and without a time, so a
// rebuild from the same inputs leaves the file byte-identical; replaced atomically, and only after the
// whole refresh (build, push) succeeded.
import { readFile, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import * as z from 'zod';
import { writeAtomically } from '../output.js';
import { DockvmError } from '../errors.js';

/** A lock file that cannot be read as one: the refresh of that spec fails and the file is left alone. */
export class LockFileError extends DockvmError {}

/** Bumped when the lock's shape changes; a lock of another version is reported, not guessed at. */
export const LOCK_VERSION = 1;

export interface Lock {
  lockVersion: number;
  /** fromImage as the spec file writes it (null: FROM scratch) */
  baseReference: string | null;
  /** what baseReference resolved to: a manifest or index digest (registry), a config digest (archive) */
  baseDigest: string | null;
  /** sha256 over every other input (src/refresh/inputs.ts) */
  inputsHash: string;
  /** the output as the spec names it, relative to the spec's directory ("oci:" + dir for a layout) */
  output: string;
  /** bytes of the output archive (null for an OCI layout) */
  outputSize: number | null;
  /** sha256 (hex) of the output archive (null for an OCI layout) */
  outputSha256: string | null;
  imageName: string;
  imageTag: string;
  /** the image's config digest; for a spec with several platforms, the digest of their index */
  configDigest: string;
  /** where the image was pushed (the expanded --push REF), or null */
  pushedTo: string | null;
  pushedDigest: string | null;
  /** the dockvm that wrote the lock (informational: a new dockvm does not by itself force a rebuild) */
  dockvmVersion: string;
}

const digest = z.string().regex(/^sha256:[0-9a-f]{64}$/, 'expected sha256:<64 hex digits>');

const lockSchema = z.strictObject({
  lockVersion: z.literal(LOCK_VERSION),
  baseReference: z.string().min(1).nullable(),
  baseDigest: digest.nullable(),
  inputsHash: digest,
  output: z.string().min(1),
  outputSize: z.number().int().nonnegative().nullable(),
  outputSha256: z.string().regex(/^[0-9a-f]{64}$/, 'expected 64 hex digits').nullable(),
  imageName: z.string().min(1),
  imageTag: z.string().min(1),
  configDigest: digest,
  pushedTo: z.string().min(1).nullable(),
  pushedDigest: digest.nullable(),
  dockvmVersion: z.string(),
});

/** "dir/app.json" → "dir/app.lock.json"; a spec not named *.json gets ".lock.json" appended. */
export function lockPathFor(specPath: string): string {
  const name = basename(specPath);
  const stem = name.endsWith('.json') ? name.slice(0, -'.json'.length) : name;
  return join(dirname(specPath), `${stem}.lock.json`);
}

/** The lock at `path`, or null when there is none yet. A file that is not a valid lock is a LockFileError. */
export async function readLock(path: string): Promise<Lock | null> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new LockFileError(`cannot read the lock file ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { source: path, cause: err });
  }
  const fix = 'delete it to force a rebuild';
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new LockFileError(`the lock file ${path} is corrupt (not JSON: ${(err as Error).message}); ${fix}`, { source: path, cause: err });
  }
  if (typeof json === 'object' && json !== null && 'lockVersion' in json && json.lockVersion !== LOCK_VERSION) {
    throw new LockFileError(
      `the lock file ${path} has lockVersion ${JSON.stringify(json.lockVersion)}, this dockvm reads version ${LOCK_VERSION} (written by another dockvm?); ${fix}`,
      { source: path },
    );
  }
  const parsed = lockSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = issue.path.length > 0 ? issue.path.map(String).join('.') : '(the document)';
    const what = issue.code === 'unrecognized_keys' ? `unknown field ${issue.keys.join(', ')}` : `${field}: ${issue.message}`;
    throw new LockFileError(`the lock file ${path} is not a valid dockvm lock (${what}); ${fix}`, { source: path, field });
  }
  return parsed.data;
}

/** The lock's text: keys in the order of the Lock interface, whatever order `lock` was built in. */
export function renderLock(lock: Lock): string {
  const ordered: Lock = {
    lockVersion: lock.lockVersion,
    baseReference: lock.baseReference,
    baseDigest: lock.baseDigest,
    inputsHash: lock.inputsHash,
    output: lock.output,
    outputSize: lock.outputSize,
    outputSha256: lock.outputSha256,
    imageName: lock.imageName,
    imageTag: lock.imageTag,
    configDigest: lock.configDigest,
    pushedTo: lock.pushedTo,
    pushedDigest: lock.pushedDigest,
    dockvmVersion: lock.dockvmVersion,
  };
  return `${JSON.stringify(ordered, null, 2)}\n`;
}

/** Replace the lock atomically (temp file beside it, renamed). */
export async function writeLock(path: string, lock: Lock): Promise<void> {
  const text = renderLock(lock);
  await writeAtomically(path, (temp) => writeFile(temp, text, { mode: 0o644 }));
}
