// The nightly refresh end to end, with real build VMs (two boots, counted): base v1 pushed under :stable,
// refresh (rebuilt in a VM), refresh again (up-to-date: no VM), base v2 pushed under :stable, refresh
// (rebuilt on v2, pushed, lock updated), and the output's base layers are v2's. How fast the no-op is:
// npm run bench:refresh.
import test from 'ava';
import { createHash } from 'node:crypto';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { readTar } from '../../src/layer/tar.js';
import { refresh, type RefreshResult } from '../../src/refresh/refresh.js';
import { openImage } from '../../src/transport/index.js';
import { resolveDigest } from '../../src/transport/registry/index.js';
import { runDockvm } from '../helpers/peers.js';
import { countQemuInProcess, type QemuCounter } from '../helpers/qemu-counter.js';
import { startRegistry } from '../helpers/registry.js';
import { isolatedEnv, noAuthFiles, pushBase, tempDir, writeSpec } from './helpers.js';

// refresh() runs here, and the CLI in children that inherit this process's environment: both counted.
let qemu: QemuCounter;
test.before(async () => {
  qemu = await countQemuInProcess();
});

const SCRIPT = 'echo "built on $(cat /etc/base-version) with BASE=$BASE" > /srv/built-on\nchown 1000:1000 /srv/built-on\n';

/** What the output image holds: its base layers' diff_ids and the top layer's /srv/built-on (text, owner). */
async function inspectOutput(path: string): Promise<{ baseDiffIds: string[]; builtOn: string; uid: number; configDigest: string }> {
  const image = await openImage(path);
  try {
    let builtOn = '';
    let uid = -1;
    for await (const { entry, body } of readTar(await image.layers.at(-1)!.openTar(), { source: path })) {
      if (entry.path !== 'srv/built-on') continue;
      uid = entry.uid;
      for await (const chunk of body) builtOn += String(chunk);
    }
    return { baseDiffIds: image.layers.slice(0, -1).map((layer) => layer.diffId), builtOn, uid, configDigest: image.configDigest };
  } finally {
    await image.close();
  }
}

async function refreshCli(dir: string, args: string[]): Promise<RefreshResult> {
  const run = await runDockvm(['refresh', 'story.json', '--json', ...args], { cwd: dir, env: isolatedEnv(dir) });
  if (run.exitCode !== 0) throw new Error(`refresh exited ${run.exitCode}: ${run.stderr}`);
  const results = JSON.parse(run.stdout) as RefreshResult[];
  return results[0]!;
}

test('base v1 → rebuilt; again → up-to-date without a VM; base v2 under the same tag → rebuilt on v2', async (t) => {
  const registry = await startRegistry(t);
  const dir = await tempDir(t, 'refresh-story');
  const base = `docker://${registry.host}/dockvm/base:stable`;
  const v1 = await pushBase(dir, 'v1', base);
  await mkdir(join(dir, 'root/srv'), { recursive: true });
  await writeFile(join(dir, 'root/srv/app.conf'), 'port=80\n');
  await writeSpec(dir, 'story', { fromImage: base, copyToRoot: 'root', runAsRoot: SCRIPT });
  const output = join(dir, 'story.tar');
  const lockPath = join(dir, 'story.lock.json');

  // Night 1: no lock yet.
  const first = await refreshCli(dir, []);
  t.like(first, { spec: 'story.json', status: 'rebuilt', baseReference: base, baseDigest: v1.digest, previousBaseDigest: null, output, reason: 'no lock file yet', bootedVm: true });
  t.is(qemu.boots(), 1);
  const built1 = await inspectOutput(output);
  t.deepEqual(built1.baseDiffIds, v1.diffIds);
  t.is(built1.builtOn, 'built on v1 with BASE=v1\n');
  t.is(built1.uid, 1000);
  const lock1 = await readFile(lockPath, 'utf8');
  const archive1 = await readFile(output);
  t.like(JSON.parse(lock1), {
    baseReference: base,
    baseDigest: v1.digest,
    output: 'story.tar',
    outputSha256: createHash('sha256').update(archive1).digest('hex'),
    configDigest: built1.configDigest,
  });

  // Night 2: nothing moved. No VM, no rewrite.
  const mtimeBefore = (await stat(output)).mtimeMs;
  const [second] = await refresh([join(dir, 'story.json')], { authFiles: noAuthFiles(dir) });
  t.like(second, { status: 'up-to-date', baseDigest: v1.digest, previousBaseDigest: v1.digest, bootedVm: false, reason: null });
  t.is(qemu.boots(), 1, 'no VM since night 1');
  t.is(await readFile(lockPath, 'utf8'), lock1);
  t.is((await stat(output)).mtimeMs, mtimeBefore);

  // Night 3: :stable now points at v2. Rebuilt on exactly v2, pushed, lock updated.
  const v2 = await pushBase(dir, 'v2', base);
  t.not(v2.digest, v1.digest);
  const push = `${registry.host}/dockvm/{name}:{tag}`;
  const third = await refreshCli(dir, ['--push', push]);
  t.like(third, {
    status: 'rebuilt',
    baseDigest: v2.digest,
    previousBaseDigest: v1.digest,
    reason: `the base moved: ${v1.digest} → ${v2.digest}`,
    bootedVm: true,
    pushedTo: `docker://${registry.host}/dockvm/dockvm-test/story:1`,
  });
  t.is(qemu.boots(), 2);
  const built2 = await inspectOutput(output);
  t.deepEqual(built2.baseDiffIds, v2.diffIds);
  t.notDeepEqual(built2.baseDiffIds, v1.diffIds);
  t.is(built2.builtOn, 'built on v2 with BASE=v2\n');
  const lock2 = JSON.parse(await readFile(lockPath, 'utf8'));
  t.like(lock2, { baseDigest: v2.digest, configDigest: built2.configDigest, pushedTo: third.pushedTo, pushedDigest: third.pushedDigest });
  t.is(lock2.inputsHash, JSON.parse(lock1).inputsHash);
  t.is<string | null, string | null>((await resolveDigest(third.pushedTo!, { authFiles: noAuthFiles(dir) })).digest, third.pushedDigest);

  // Night 4: the same command again is a no-op.
  const fourth = await refreshCli(dir, ['--push', push]);
  t.like(fourth, { status: 'up-to-date', baseDigest: v2.digest, bootedVm: false });
  t.is(qemu.boots(), 2, 'no VM since night 3');
});
