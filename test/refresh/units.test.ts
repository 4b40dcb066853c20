// The pieces of refresh that need no registry and no build: lock files, shards, --push templates, and
// what the inputs hash does and does not notice.
import test from 'ava';
import { chmod, mkdir, readFile, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DockvmError, UsageError } from '../../src/errors.js';
import { canonicalJson, inputsHash } from '../../src/refresh/inputs.js';
import { LockFileError, lockPathFor, readLock, renderLock, writeLock, type Lock } from '../../src/refresh/lock.js';
import { checkPushTemplate, pushTarget } from '../../src/refresh/push-target.js';
import { parseShard, selectSpecs } from '../../src/refresh/shard.js';
import { checkSpec } from '../../src/spec/load.js';
import { tempDir } from './helpers.js';

const DIGEST = `sha256:${'a'.repeat(64)}`;

function sampleLock(): Lock {
  return {
    lockVersion: 1,
    baseReference: 'docker://127.0.0.1:5000/base:stable',
    baseDigest: DIGEST,
    inputsHash: `sha256:${'b'.repeat(64)}`,
    output: 'app.tar',
    outputSize: 10240,
    outputSha256: 'c'.repeat(64),
    imageName: 'app',
    imageTag: '1',
    configDigest: `sha256:${'d'.repeat(64)}`,
    pushedTo: null,
    pushedDigest: null,
    dockvmVersion: '0.1.0',
  };
}

test('the lock sits beside the spec, named after it', (t) => {
  t.is(lockPathFor('/srv/specs/app.json'), '/srv/specs/app.lock.json');
  t.is(lockPathFor('specs/app.spec'), 'specs/app.spec.lock.json');
});

test('a lock is written with a fixed key order, whatever order it was built in, and reads back equal', async (t) => {
  const dir = await tempDir(t);
  const lock = sampleLock();
  const shuffled = Object.fromEntries(Object.entries(lock).reverse()) as unknown as Lock;
  t.is(renderLock(shuffled), renderLock(lock));
  t.deepEqual(Object.keys(JSON.parse(renderLock(shuffled))), Object.keys(lock));
  const path = join(dir, 'app.lock.json');
  await writeLock(path, shuffled);
  t.is(await readFile(path, 'utf8'), renderLock(lock));
  t.deepEqual(await readLock(path), lock);
  t.is(await readLock(join(dir, 'none.lock.json')), null);
});

test('a corrupt lock is an error naming the file and saying to delete it', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'app.lock.json');
  const cases: [string, RegExp][] = [
    ['{"lockVersion": 1, "baseDig', /is corrupt \(not JSON/],
    [JSON.stringify({ ...sampleLock(), inputsHash: 'sha256:short' }), /inputsHash: expected sha256:<64 hex digits>/],
    [JSON.stringify({ ...sampleLock(), extra: 1 }), /unknown field extra/],
    [JSON.stringify({ ...sampleLock(), lockVersion: 9 }), /lockVersion 9, this dockvm reads version 1/],
    ['[]', /is not a valid dockvm lock/],
  ];
  for (const [text, why] of cases) {
    await writeFile(path, text);
    const error = await t.throwsAsync(readLock(path), { instanceOf: LockFileError });
    t.true(error!.message.startsWith(`the lock file ${path} `), error!.message);
    t.regex(error!.message, why);
    t.regex(error!.message, /delete it to force a rebuild$/);
  }
});

test('--shard I/N: disjoint shards that together cover every spec, by sorted path', (t) => {
  const specs = ['c.json', 'a.json', 'specs/b.json', 'd.json', 'e.json', './a.json'];
  const all = selectSpecs(specs, undefined, '/work');
  t.deepEqual(all, ['a.json', 'c.json', 'd.json', 'e.json', 'specs/b.json']);
  const shards = [1, 2, 3].map((index) => selectSpecs(specs, { index, count: 3 }, '/work'));
  t.deepEqual(shards, [['a.json', 'e.json'], ['c.json', 'specs/b.json'], ['d.json']]);
  t.deepEqual(parseShard('2/3'), { index: 2, count: 3 });
  for (const bad of ['0/3', '4/3', '1/0', '1', 'a/b', '1/2/3']) t.throws(() => parseShard(bad), { instanceOf: UsageError, message: /expected I\/N/ });
});

test('--push templates: {name} and {tag}, a tag added when the REF has none, {name} required for several specs', (t) => {
  t.is(pushTarget('127.0.0.1:5000/{name}:{tag}', 'team/app', '1.2'), 'docker://127.0.0.1:5000/team/app:1.2');
  t.is(pushTarget('docker://127.0.0.1:5000/mirror/{name}', 'app', 'v1'), 'docker://127.0.0.1:5000/mirror/app:v1');
  t.is(pushTarget('127.0.0.1:5000/app:nightly', 'app', 'v1'), 'docker://127.0.0.1:5000/app:nightly');
  t.notThrows(() => checkPushTemplate('127.0.0.1:5000/app', 1));
  t.throws(() => checkPushTemplate('127.0.0.1:5000/app', 2), { instanceOf: UsageError, message: /would send 2 images to one place: put \{name\} in it/ });
  t.throws(() => checkPushTemplate('127.0.0.1:5000/{image}', 1), { instanceOf: UsageError, message: /unknown placeholder \{image\}/ });
  t.throws(() => checkPushTemplate('127.0.0.1:5000/UPPER/{name}', 2), { instanceOf: DockvmError, message: /not a registry reference/ });
});

test('the inputs hash follows what reaches the layer: file bytes, modes, links, the scripts; not formatting or fresh mtimes', async (t) => {
  const dir = await tempDir(t);
  await mkdir(join(dir, 'root/etc'), { recursive: true });
  await writeFile(join(dir, 'root/etc/app.conf'), 'port=80\n');
  await symlink('app.conf', join(dir, 'root/etc/link'));
  const fields = { name: 'app', tag: '1', copyToRoot: 'root', runAsRoot: 'echo hi', output: 'app.tar' };
  const hashOf = async (raw: Record<string, unknown> = fields) => inputsHash(checkSpec(raw, join(dir, 'app.json')), raw);
  const relink = async (target: string) => {
    await rm(join(dir, 'root/etc/link'));
    await symlink(target, join(dir, 'root/etc/link'));
  };
  const original = await hashOf();
  t.regex(original, /^sha256:[0-9a-f]{64}$/);

  // Same content, keys in another order: the spec's canonical form is hashed.
  t.is(await hashOf(Object.fromEntries(Object.entries(fields).reverse())), original);
  t.is(canonicalJson({ b: 1, a: { d: [1, { f: 1, e: 2 }], c: null } }), '{"a":{"c":null,"d":[1,{"e":2,"f":1}]},"b":1}');
  // A fresh checkout: mtimes after `created` are clamped in the layer, so they do not count.
  const now = new Date();
  await utimes(join(dir, 'root/etc/app.conf'), now, now);
  t.is(await hashOf(), original);

  const changes: [string, () => Promise<void>, () => Promise<void>][] = [
    ['file bytes', () => writeFile(join(dir, 'root/etc/app.conf'), 'port=81\n'), () => writeFile(join(dir, 'root/etc/app.conf'), 'port=80\n')],
    ['a mode', () => chmod(join(dir, 'root/etc/app.conf'), 0o600), () => chmod(join(dir, 'root/etc/app.conf'), 0o644)],
    ['a new file', () => writeFile(join(dir, 'root/etc/new'), ''), () => rm(join(dir, 'root/etc/new'))],
    [
      'a link target',
      () => relink('other'),
      () => relink('app.conf'),
    ],
  ];
  for (const [what, change, undo] of changes) {
    await change();
    t.not(await hashOf(), original, what);
    await undo();
    t.is(await hashOf(), original, `${what} undone`);
  }
  t.not(await hashOf({ ...fields, runAsRoot: 'echo bye' }), original, 'the script');
  t.not(await hashOf({ ...fields, uid: 1000 }), original, 'the owner');
  t.not(await hashOf({ ...fields, keepContentsDirlinks: true }), original, 'a spec field');
});

test('a missing copyToRoot source is an error naming it', async (t) => {
  const dir = await tempDir(t);
  const raw = { name: 'app', copyToRoot: 'missing' };
  await t.throwsAsync(inputsHash(checkSpec(raw, join(dir, 'app.json')), raw), { message: `copyToRoot: cannot read ${join(dir, 'missing')}: ENOENT` });
});
