// The snapshot cache's checks, on files (no VM): a snapshot is used only when its description, the size
// of its memory and the digest of its state agree; a refused one is remembered.
import { mkdtemp, rm, truncate, writeFile, readFile, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { draftSnapshot, findSnapshot, refuseSnapshot, snapshotsDir } from '../../src/vm/snapshot.js';

const KEY = '0123456789abcdef0123456789abcdef';

async function cache(t: { teardown(fn: () => Promise<void>): void }): Promise<NodeJS.ProcessEnv> {
  const dir = await mkdtemp(join(tmpdir(), 'dockvm-snapshot-cache-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return { DOCKVM_CACHE: dir };
}

/** A committed snapshot of a 16 MiB guest, its state some bytes. */
async function saved(env: NodeJS.ProcessEnv): Promise<{ dir: string; memory: string; state: string }> {
  const draft = await draftSnapshot(env);
  await writeFile(draft.memory, '');
  await truncate(draft.memory, 16 * 1024 * 1024);
  await writeFile(draft.state, Buffer.from('QEVM device state'));
  return draft.commit(KEY, 16);
}

test('none saved: missing; once committed: ready, at the key\'s name, and no draft is left', async (t) => {
  const env = await cache(t);
  t.like(await findSnapshot(KEY, 16, env), { kind: 'missing' });
  const files = await saved(env);
  t.is(files.dir, join(snapshotsDir(env), KEY));
  t.deepEqual(await findSnapshot(KEY, 16, env), { kind: 'ready', snapshot: files });
  t.deepEqual(await readdir(snapshotsDir(env)), [KEY]);
});

test('a damaged state, a memory of another size or a missing description: unusable, saying why', async (t) => {
  const env = await cache(t);
  const files = await saved(env);
  t.like(await findSnapshot(KEY, 32, env), { kind: 'unusable', reason: 'its memory file is 16777216 bytes, not 33554432' });

  const state = await readFile(files.state);
  state[0] = state[0]! ^ 1;
  await writeFile(files.state, state);
  t.like(await findSnapshot(KEY, 16, env), { kind: 'unusable', reason: 'its device state does not match the digest it was saved with' });

  await writeFile(join(files.dir, 'snapshot.json'), '{"format": 1, "key": "another"}');
  t.like(await findSnapshot(KEY, 16, env), { kind: 'unusable', reason: 'it was saved by another dockvm (format 1, key another)' });
  await rm(join(files.dir, 'snapshot.json'));
  t.like(await findSnapshot(KEY, 16, env), { kind: 'unusable', reason: 'its description snapshot.json is missing' });
});

test('a refused snapshot is removed and remembered with its reason; a discarded draft leaves nothing', async (t) => {
  const env = await cache(t);
  await saved(env);
  const marker = await refuseSnapshot(KEY, 'load of migration failed:\n Invalid argument', env);
  t.deepEqual(await findSnapshot(KEY, 16, env), { kind: 'refused', marker, reason: 'load of migration failed: Invalid argument' });
  t.deepEqual(await readdir(snapshotsDir(env)), [`${KEY}.refused`]);

  const draft = await draftSnapshot(env);
  await writeFile(draft.state, 'x');
  await draft.discard();
  t.deepEqual(await readdir(snapshotsDir(env)), [`${KEY}.refused`]);
});
