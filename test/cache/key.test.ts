// Build cache keys: each part of a step's material changes its key, and a change reaches the steps after
// it (through their parent) and none before it; the files a COPY selects hash by what reaches the layer;
// the guest's version changes with what the guest is made of.
import test from 'ava';
import { chmod, link, mkdir, readFile, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { hashDirectory } from '../../src/cache/file-hash.js';
import { guestVersion } from '../../src/cache/guest-version.js';
import { stepKey, type StepKeyMaterial } from '../../src/cache/key.js';
import { sha256 } from '../../src/image/digest.js';
import { tempDir } from '../transport/archives.js';

const base = [sha256('base layer 1'), sha256('base layer 2')];
const run: StepKeyMaterial = {
  parent: { baseDiffIds: base },
  instruction: 'RUN apt-get install -y curl',
  inputs: {},
  env: ['PATH=/usr/bin:/bin', 'HOME=/root'],
  mounts: [{ type: 'cache', target: '/var/cache/apt' }],
  network: 'none',
  options: { clampMtime: 1 },
  platform: 'linux/amd64',
  guest: sha256('guest v1'),
};

test('every part of the material is in the key; the order its fields were written in is not', (t) => {
  const key = stepKey(run);
  t.regex(key, /^sha256:[0-9a-f]{64}$/);
  const reordered = Object.fromEntries(Object.entries(run).reverse()) as unknown as StepKeyMaterial;
  t.is(stepKey({ ...reordered, mounts: [{ target: '/var/cache/apt', type: 'cache' }] }), key, 'keys of objects in any order');
  const changes: Partial<StepKeyMaterial>[] = [
    { parent: { baseDiffIds: [base[0]!] } },
    { parent: { baseDiffIds: [...base].reverse() } },
    { parent: sha256('a previous step') },
    { instruction: 'RUN apt-get install -y curl wget' },
    { inputs: { context: sha256('files') } },
    { env: ['PATH=/usr/bin:/bin', 'HOME=/home'] },
    { env: ['HOME=/root', 'PATH=/usr/bin:/bin'] },
    { mounts: [{ type: 'cache', target: '/var/cache/apt', sharing: 'locked' }] },
    { mounts: [] },
    { network: 'user' },
    { options: { clampMtime: 2 } },
    { platform: 'linux/arm64' },
    { guest: sha256('guest v2') },
    { guest: null },
  ];
  const keys = new Set([key, ...changes.map((change) => stepKey({ ...run, ...change }))]);
  t.is(keys.size, changes.length + 1, 'each change gives a key of its own');
  // Absent and empty are the same material.
  t.is(stepKey({ parent: { baseDiffIds: [] }, instruction: 'COPY a /a', platform: 'linux/amd64', guest: null }), stepKey({ parent: { baseDiffIds: [] }, instruction: 'COPY a /a', inputs: {}, env: [], mounts: [], network: 'none', options: {}, platform: 'linux/amd64', guest: null }));
});

test('a changed step changes its own key and every later one, and none before it', (t) => {
  const chain = (instructions: string[]) => {
    const keys: string[] = [];
    let parent: StepKeyMaterial['parent'] = { baseDiffIds: base };
    for (const instruction of instructions) {
      const key = stepKey({ ...run, parent, instruction });
      keys.push(key);
      parent = key as `sha256:${string}`;
    }
    return keys;
  };
  const before = chain(['RUN a', 'RUN b', 'RUN c', 'RUN d']);
  const after = chain(['RUN a', 'RUN B', 'RUN c', 'RUN d']);
  t.is(after[0], before[0]);
  for (const i of [1, 2, 3]) t.not(after[i], before[i], `step ${i + 1}`);
});

/** A small tree: a file, an executable, a symlink, a hard link, a subdirectory. */
async function tree(t: Parameters<typeof tempDir>[0]): Promise<string> {
  const root = join(await tempDir(t), 'ctx');
  await mkdir(join(root, 'sub'), { recursive: true });
  await writeFile(join(root, 'a.txt'), 'hello\n');
  await writeFile(join(root, 'run.sh'), '#!/bin/sh\n');
  await chmod(join(root, 'run.sh'), 0o755);
  await symlink('a.txt', join(root, 'link'));
  await link(join(root, 'a.txt'), join(root, 'sub', 'hard'));
  return root;
}

test('files hash by what reaches the layer: mtimes above the clamp do not count, everything else does', async (t) => {
  const root = await tree(t);
  const clamp = 1_000_000;
  const options = { uid: 0, gid: 0, followDirSymlinks: false, clampMtime: clamp };
  const digest = await hashDirectory(root, options);
  t.is(await hashDirectory(root, options), digest, 'the same files hash alike');

  // A fresh checkout: every mtime later than the clamp, which the layer clamps away.
  await utimes(join(root, 'a.txt'), new Date(), new Date(Date.now() + 60_000));
  t.is(await hashDirectory(root, options), digest, 'an mtime the layer clamps is not part of the hash');
  // An mtime below the clamp reaches the layer as it is.
  await utimes(join(root, 'a.txt'), 500, 500);
  const old = await hashDirectory(root, options);
  t.not(old, digest, 'an mtime older than the clamp reaches the layer');
  t.not(await hashDirectory(root, { ...options, clampMtime: undefined }), old, 'no clamp: mtimes count as they are');

  const changed = async (change: () => Promise<unknown>, what: string, walk = options) => {
    const before = await hashDirectory(root, walk);
    await change();
    t.not(await hashDirectory(root, walk), before, what);
  };
  await changed(() => writeFile(join(root, 'a.txt'), 'hellO\n'), 'content (same size)');
  await changed(() => chmod(join(root, 'run.sh'), 0o700), 'mode');
  await changed(async () => {
    await rm(join(root, 'link'));
    await symlink('run.sh', join(root, 'link'));
  }, 'symlink target');
  await changed(() => writeFile(join(root, 'sub', 'new'), ''), 'a new empty file');
  const now = await hashDirectory(root, options);
  t.not(await hashDirectory(root, { ...options, uid: 1000, gid: 1000 }), now, 'owner after --chown');
  await changed(async () => {
    await rm(join(root, 'sub', 'hard'));
    await writeFile(join(root, 'sub', 'hard'), 'hellO\n');
  }, 'a hard link replaced by a copy of the same bytes');
});

test('the guest version follows what the guest is made of (here: the busybox in its initramfs)', async (t) => {
  const dir = await tempDir(t);
  const busybox = join(dir, 'busybox');
  await writeFile(busybox, Buffer.concat([await readFile(process.env.DOCKVM_BUSYBOX || '/bin/busybox'), Buffer.from([0])]));
  await chmod(busybox, 0o755);
  const stock = await guestVersion();
  t.regex(stock, /^sha256:[0-9a-f]{64}$/);
  t.is(await guestVersion({ ...process.env }), stock, 'the same guest, the same version');
  t.not(await guestVersion({ ...process.env, DOCKVM_BUSYBOX: busybox }), stock, 'another busybox, another guest');
});
