// The local build cache: an entry and its layer go in atomically and come out byte for byte; a layer
// damaged on disk is caught the first time a process uses it and is never handed out; --no-cache misses
// but still stores; DOCKVM_BUILD_CACHE=off stores nothing; a store that cannot be written only warns.
import test from 'ava';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BuildCache } from '../../src/cache/build-cache.js';
import { LocalStore, renderEntry, type CacheEntry } from '../../src/cache/local-store.js';
import { sha256 } from '../../src/image/digest.js';
import { tempDir } from '../transport/archives.js';
import { fileLayer } from '../registry/images.js';

async function builtLayer(dir: string, name: string, content: string) {
  const tar = await fileLayer(name, content);
  const path = join(dir, `${name}.tar`);
  await writeFile(path, tar);
  return { tar, layer: { path, diffId: sha256(tar), size: tar.length } };
}

// This file tests the cache: package.json's ava config turns it off for every other test file.
delete process.env.DOCKVM_BUILD_CACHE;

const record = { createdBy: 'RUN echo hi > /hi', platform: 'linux/amd64' };

test('a stored layer comes back byte for byte under its key, and only under its key', async (t) => {
  const dir = await tempDir(t);
  const cache = new BuildCache({ dir: join(dir, 'cache'), onWarning: (line) => t.fail(line) });
  const { tar, layer } = await builtLayer(dir, 'hi', 'hi\n');
  const key = sha256('step 1');
  t.is(await cache.lookup(key), undefined, 'empty at first');
  await cache.store(key, layer, { ...record, meta: { stage: 'build' } });
  const hit = await cache.lookup(key);
  t.truthy(hit);
  t.like(hit!, { source: 'local', entry: { key, diffId: layer.diffId, size: tar.length, createdBy: record.createdBy, platform: 'linux/amd64', meta: { stage: 'build' } } });
  t.deepEqual(await readFile(hit!.path), tar);
  t.is(await cache.lookup(sha256('step 2')), undefined, 'another key misses');
  // The entry is plain readable JSON: the key, the layer, the history line — nothing else.
  const entryFile = await readFile(join(dir, 'cache', 'entries', `${key.slice(7)}.json`), 'utf8');
  t.deepEqual(Object.keys(JSON.parse(entryFile)), ['cacheEntryVersion', 'key', 'diffId', 'size', 'createdBy', 'platform', 'meta']);
  t.deepEqual(await readdir(join(dir, 'cache', 'layers')), [`${layer.diffId.slice(7)}.tar`], 'no temp file left');
  // Two keys with the same layer share its tar.
  await cache.store(sha256('step 1 elsewhere'), layer, record);
  t.is((await readdir(join(dir, 'cache', 'layers'))).length, 1);
});

test('a layer damaged on disk is caught the first time a process uses it: a miss, and both files are gone', async (t) => {
  const dir = join(await tempDir(t), 'cache');
  const store = new LocalStore(dir);
  const tar = await fileLayer('x', 'the real content\n');
  const entry: CacheEntry = { key: sha256('damaged step'), diffId: sha256(tar), size: tar.length, createdBy: 'RUN x', platform: 'linux/amd64', meta: {} };
  // Written as another process would have left it, then damaged: this process has never checked it.
  await mkdir(join(dir, 'entries'), { recursive: true });
  await mkdir(join(dir, 'layers'), { recursive: true });
  await writeFile(store.entryPath(entry.key), renderEntry(entry));
  const damaged = Buffer.from(tar);
  damaged[600]! ^= 0xff;
  await writeFile(store.layerPath(entry.diffId), damaged);
  t.is(await store.get(entry.key), undefined);
  t.deepEqual(await readdir(join(dir, 'layers')), []);
  t.deepEqual(await readdir(join(dir, 'entries')), []);

  // Zeros where the content was, as a crash can leave a tar the store did not sync: the same.
  await writeFile(store.entryPath(entry.key), renderEntry(entry));
  await writeFile(store.layerPath(entry.diffId), Buffer.alloc(tar.length));
  t.is(await store.get(entry.key), undefined);
  t.deepEqual(await readdir(join(dir, 'layers')), []);

  // The same, undamaged: a hit.
  await writeFile(store.entryPath(entry.key), renderEntry(entry));
  await writeFile(store.layerPath(entry.diffId), tar);
  t.deepEqual(await readFile((await store.get(entry.key))!.path), tar);

  // An entry file that is not one (truncated, edited) is a miss, and removed.
  await writeFile(store.entryPath(entry.key), renderEntry(entry).slice(0, 40));
  t.is(await store.get(entry.key), undefined);
  t.deepEqual(await readdir(join(dir, 'entries')), []);
});

test('--no-cache misses but stores what it built; DOCKVM_BUILD_CACHE=off neither looks nor stores', async (t) => {
  const dir = await tempDir(t);
  const { tar, layer } = await builtLayer(dir, 'nc', 'no cache\n');
  const key = sha256('no-cache step');
  const noCache = new BuildCache({ dir: join(dir, 'cache'), noCache: true });
  await noCache.store(key, layer, record);
  t.is(await noCache.lookup(key), undefined, '--no-cache never hits');
  t.deepEqual(await readFile((await new BuildCache({ dir: join(dir, 'cache') }).lookup(key))!.path), tar, 'the next build does');

  const off = new BuildCache({ dir: join(dir, 'off'), env: { ...process.env, DOCKVM_BUILD_CACHE: 'off' } });
  await off.store(key, layer, record);
  t.is(await off.lookup(key), undefined);
  await t.throwsAsync(readdir(join(dir, 'off')), { code: 'ENOENT' }, 'nothing written');
});

test('a build cache that cannot be written is one warning, and the build goes on', async (t) => {
  const dir = await tempDir(t);
  const { layer } = await builtLayer(dir, 'ro', 'read-only\n');
  await writeFile(join(dir, 'not-a-dir'), 'a file where the cache should be');
  const warnings: string[] = [];
  const cache = new BuildCache({ dir: join(dir, 'not-a-dir'), onWarning: (line) => warnings.push(line) });
  await t.notThrowsAsync(cache.store(sha256('step'), layer, record));
  t.is(warnings.length, 1);
  t.regex(warnings[0]!, /^cannot store the build cache entry sha256:[0-9a-f]{64} in .*not-a-dir \(.*\); the build goes on$/);
  t.is(await cache.lookup(sha256('step')), undefined);
});
