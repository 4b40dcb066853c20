// The build cache in a registry (--cache-to / --cache-from docker://REG/REPO, one tag per key): a machine
// with an empty local cache gets the entry, verified, with the same layer bytes, and keeps it locally; two
// machines push the same manifest for the same entry; a poisoned tag (valid blobs whose config names another
// key) is refused with a warning naming the key and the registry; a missing tag is a quiet miss; a registry
// that cannot be reached is a warning and a miss, never a failed build.
import test from 'ava';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BuildCache } from '../../src/cache/build-cache.js';
import { entryImage, ENTRY_LABELS } from '../../src/cache/registry-store.js';
import { hex, sha256 } from '../../src/image/digest.js';
import { ImageReferenceError } from '../../src/errors.js';
import { openRegistryImage, pushImage, resolveDigest, type RegistryLayer } from '../../src/transport/registry/index.js';
import { runDockvm } from '../helpers/peers.js';
import { freePort, startFaultProxy, startRegistry } from '../helpers/registry.js';
import { tempDir } from '../transport/archives.js';
import { fileLayer } from '../registry/images.js';

const registry = { authFiles: [] as string[] };
// This file tests the cache: package.json's ava config turns it off for every other test file.
delete process.env.DOCKVM_BUILD_CACHE;

const record = { createdBy: 'RUN make install', platform: 'linux/amd64', meta: { stage: 'build' } };

async function builtLayer(dir: string, name: string, content: string) {
  const tar = await fileLayer(name, content);
  const path = join(dir, `${name}.tar`);
  await writeFile(path, tar);
  return { tar, layer: { path, diffId: sha256(tar), size: tar.length } };
}

function machine(dir: string, name: string, options: { cacheFrom?: string[]; cacheTo?: string[] }, warnings: string[] = []) {
  return new BuildCache({ dir: join(dir, name), registry, onWarning: (line) => warnings.push(line), ...options });
}

test('--cache-to on one machine, --cache-from on another with an empty cache: the same layer bytes, kept locally', async (t) => {
  const { host } = await startRegistry(t);
  const dir = await tempDir(t);
  const repo = `docker://${host}/dockvm/cache`;
  const { tar, layer } = await builtLayer(dir, 'app', 'built on machine A\n');
  const key = sha256('RUN make install, on top of …');
  const warnings: string[] = [];

  await machine(dir, 'a', { cacheTo: [repo] }, warnings).store(key, layer, record);
  t.deepEqual(warnings, []);

  const b = machine(dir, 'b', { cacheFrom: [repo] }, warnings);
  const hit = await b.lookup(key);
  t.deepEqual(warnings, []);
  t.like(hit, { source: repo, entry: { key, diffId: layer.diffId, size: tar.length, createdBy: record.createdBy, platform: 'linux/amd64', meta: { stage: 'build' } } });
  t.deepEqual(await readFile(hit!.path), tar, 'the same layer bytes');
  // It joined b's local store: found there with no registry named.
  t.like(await machine(dir, 'b', {}).lookup(key), { source: 'local' });

  // The entry as the registry holds it: one layer, and a config that records the key, diff_id and createdBy.
  const image = await openRegistryImage(`${repo}:${hex(key)}`, registry);
  t.teardown(() => image.close());
  t.is(image.layers.length, 1);
  t.deepEqual(image.config.rootfs.diff_ids, [layer.diffId]);
  t.like(image.config.config?.Labels, { [ENTRY_LABELS.key]: key, [ENTRY_LABELS.createdBy]: record.createdBy });

  // Machine C pushes the same entry to another repository: the same manifest (deterministic gzip and config).
  await machine(dir, 'c', { cacheTo: [`docker://${host}/dockvm/other`] }).store(key, layer, record);
  const [one, two] = await Promise.all([resolveDigest(`${repo}:${hex(key)}`, registry), resolveDigest(`docker://${host}/dockvm/other:${hex(key)}`, registry)]);
  t.is(one.digest, two.digest);
});

test('a local hit is pushed to a --cache-to registry that lacks it', async (t) => {
  const { host } = await startRegistry(t);
  const dir = await tempDir(t);
  const repo = `docker://${host}/dockvm/late`;
  const { tar, layer } = await builtLayer(dir, 'late', 'built before the registry was named\n');
  const key = sha256('an old step');
  await machine(dir, 'a', {}).store(key, layer, record);
  t.like(await machine(dir, 'a', { cacheTo: [repo] }).lookup(key), { source: 'local' });
  const hit = await machine(dir, 'fresh', { cacheFrom: [repo] }).lookup(key);
  t.deepEqual(await readFile(hit!.path), tar);
});

test('a poisoned entry (valid blobs, a config naming another key) is refused with a warning naming the key and the registry', async (t) => {
  const { host } = await startRegistry(t);
  const dir = await tempDir(t);
  const repo = `docker://${host}/dockvm/poisoned`;
  const { layer } = await builtLayer(dir, 'evil', 'the layer of another step\n');
  const asked = sha256('the step being built');
  const other = sha256('some other step');
  // The entry of `other`, pushed under the tag of `asked`: every digest is right, the key is not.
  const poisoned = entryImage({ key: other, diffId: layer.diffId, size: layer.size, createdBy: 'RUN evil', platform: 'linux/amd64', meta: {} }, layer.path);
  await pushImage(poisoned, `${repo}:${hex(asked)}`, registry);

  const warnings: string[] = [];
  const cache = machine(dir, 'victim', { cacheFrom: [repo] }, warnings);
  t.is(await cache.lookup(asked), undefined);
  t.is(warnings.length, 1);
  t.true(warnings[0]!.includes(`${repo}:${hex(asked)}`), warnings[0]);
  t.true(warnings[0]!.includes(asked) && warnings[0]!.includes(other), warnings[0]);
  t.regex(warnings[0]!, /is for another step/);
  await t.throwsAsync(readdir(join(dir, 'victim', 'entries')), { code: 'ENOENT' }, 'nothing joined the local store');
  t.is(await machine(dir, 'victim', {}).lookup(other), undefined, 'not kept under the key it names either');
});

test('a missing tag is a quiet miss; an unreachable registry is a warning and a miss; a tagged name is refused up front', async (t) => {
  const { host } = await startRegistry(t);
  const dir = await tempDir(t);
  const { layer } = await builtLayer(dir, 'x', 'x\n');
  const warnings: string[] = [];
  t.is(await machine(dir, 'm', { cacheFrom: [`docker://${host}/dockvm/empty`] }, warnings).lookup(sha256('never built')), undefined);
  t.deepEqual(warnings, [], 'a miss is not a problem');

  const closed = `docker://127.0.0.1:${await freePort()}/dockvm/cache`;
  const offline = machine(dir, 'm', { cacheFrom: [closed], cacheTo: [closed] }, warnings);
  t.is(await offline.lookup(sha256('anything')), undefined);
  await t.notThrowsAsync(offline.store(sha256('built'), layer, record));
  t.is(warnings.length, 2, warnings.join('\n'));
  t.regex(warnings[0]!, new RegExp(`^cannot read the build cache entry sha256:[0-9a-f]{64} from ${closed} \\(.*connection refused.*\\); going on without it$`));
  t.regex(warnings[1]!, new RegExp(`^cannot push the build cache entry sha256:[0-9a-f]{64} to ${closed} \\(.*connection refused.*\\); the build goes on$`));
  t.like(await machine(dir, 'm', {}).lookup(sha256('built')), { source: 'local' }, 'stored locally all the same');

  for (const bad of [`docker://${host}/dockvm/cache:latest`, `docker://${host}/dockvm/cache@${sha256('x')}`, `${host}/dockvm/cache`]) {
    t.throws(() => machine(dir, 'm', { cacheFrom: [bad] }), { instanceOf: ImageReferenceError }, bad);
  }
});

test('run-as-root refuses a tagged --cache-from or --cache-to before anything runs: exit 2, one line', async (t) => {
  const dir = await tempDir(t);
  const spec = join(dir, 'spec.json');
  await writeFile(spec, JSON.stringify({ name: 'localhost/dockvm-test/flags', runAsRoot: 'true', output: 'out.tar' }));
  for (const flag of ['--cache-from', '--cache-to']) {
    const run = await runDockvm(['run-as-root', spec, flag, 'docker://127.0.0.1:5000/cache:v1']);
    t.is(run.exitCode, 2, run.stderr);
    t.is(run.stderr, 'dockvm: docker://127.0.0.1:5000/cache:v1: name a repository without a tag or digest (docker://HOST/REPO): each cache entry is tagged with its key\n');
  }
  await t.throwsAsync(readFile(join(dir, 'out.tar')), { code: 'ENOENT' }, 'nothing written');
});

test('an entry whose blob arrives damaged is a warning and a miss, and nothing of it is kept', async (t) => {
  const { host } = await startRegistry(t);
  const dir = await tempDir(t);
  const { layer } = await builtLayer(dir, 'flip', 'x'.repeat(20_000));
  const key = sha256('a step whose layer gets damaged on the way');
  await machine(dir, 'a', { cacheTo: [`docker://${host}/dockvm/flip`] }).store(key, layer, record);
  const pushed = await openRegistryImage(`docker://${host}/dockvm/flip:${hex(key)}`, registry);
  const blob = (pushed.layers[0] as RegistryLayer).descriptor.digest;
  await pushed.close();
  const proxy = await startFaultProxy(t, host, { flipBlob: blob });

  const warnings: string[] = [];
  const cache = machine(dir, 'b', { cacheFrom: [`docker://${proxy.host}/dockvm/flip`] }, warnings);
  t.is(await cache.lookup(key), undefined);
  t.is(warnings.length, 1);
  t.regex(warnings[0]!, /^cannot read the build cache entry sha256:[0-9a-f]{64} from docker:\/\/127\.0\.0\.1:\d+\/dockvm\/flip \(.*do not match the digest.*\); going on without it$/);
  await t.throwsAsync(readdir(join(dir, 'b', 'layers')), { code: 'ENOENT' });
});
