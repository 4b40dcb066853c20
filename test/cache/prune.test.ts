// dockvm cache prune: drops the least recently used of what dockvm makes again (build cache entries with
// their layers, squashfs images, layer tars, push's gzip notes, VM snapshots, cache mounts) until the rest fits --max-size; a hit makes
// an entry recent; --all drops everything prunable; the kernel, initramfs, agent and KVM verdict stay.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, rm, stat, truncate, utimes, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { LocalStore } from '../../src/cache/local-store.js';
import { CacheMountStore } from '../../src/cache/cache-mounts.js';
import { sha256 } from '../../src/image/digest.js';
import { runDockvm } from '../helpers/peers.js';
import { tempDir } from '../transport/archives.js';
import { fileLayer } from '../registry/images.js';

const HOUR = 3600_000;

async function file(path: string, bytes: number, ageMs: number): Promise<string> {
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, randomBytes(bytes));
  await age(path, ageMs);
  return path;
}

async function age(path: string, ageMs: number): Promise<void> {
  const when = new Date(Date.now() - ageMs);
  await utimes(path, when, when);
}

/** A build cache entry of about `bytes`, last used `ageMs` ago; its files. */
async function entry(store: LocalStore, name: string, bytes: number, ageMs: number): Promise<{ key: `sha256:${string}`; files: string[] }> {
  const tar = await fileLayer(name, randomBytes(bytes));
  const source = join(store.dir, '..', `${name}.src`);
  await writeFile(source, tar);
  const key = sha256(`step ${name}`);
  const cached = await store.put({ key, diffId: sha256(tar), size: tar.length, createdBy: `RUN ${name}`, platform: 'linux/amd64', meta: {} }, source);
  const files = [store.entryPath(key), cached.path];
  for (const path of files) await age(path, ageMs);
  return { key, files };
}

const sizeOf = async (paths: string[]) => (await Promise.all(paths.map(async (path) => (await stat(path)).size))).reduce((a, b) => a + b, 0);

async function prune(cache: string, args: string[], env: Record<string, string> = {}) {
  const run = await runDockvm(['cache', 'prune', ...args], { env: { DOCKVM_CACHE: cache, DOCKVM_BUILD_CACHE_DIR: '', DOCKVM_CACHE_MAX_SIZE: '', ...env } });
  return run;
}

test('least recently used first, down to --max-size; a hit keeps an entry; --all leaves only what boots need', async (t) => {
  const cache = join(await tempDir(t), 'cache');
  const store = new LocalStore(join(cache, 'build-cache'));
  const oldTar = await file(join(cache, 'tars', `${'a'.repeat(64)}.tar`), 150_000, 6 * HOUR);
  const e1 = await entry(store, 'e1', 100_000, 5 * HOUR);
  const e2 = await entry(store, 'e2', 100_000, 4 * HOUR);
  const e3 = await entry(store, 'e3', 100_000, 3 * HOUR);
  const sqfs = await file(join(cache, 'lowers', `${'b'.repeat(64)}.sqfs`), 200_000, 2 * HOUR);
  const gzipNote = await file(join(cache, 'push-gzip', 'zlib1.3-l3', 'c'.repeat(64)), 80, 1 * HOUR);
  const staleTemp = await file(join(cache, 'build-cache', 'layers', '.dead.tar.0123456789ab.tmp'), 10_000, 2 * HOUR);
  const freshTemp = await file(join(cache, 'build-cache', 'layers', '.busy.tar.0123456789ab.tmp'), 10_000, 0);
  const boots = [
    await file(join(cache, 'kernel', 'debian-cloud', 'boot', 'vmlinuz-6.1'), 50_000, 10 * HOUR),
    await file(join(cache, 'initramfs', 'f00.cpio'), 50_000, 10 * HOUR),
    await file(join(cache, 'agent', '0123456789abcdef', 'dockvm-agent'), 20_000, 10 * HOUR),
    await file(join(cache, 'accel.json'), 300, 10 * HOUR),
  ];
  const prunable = [oldTar, ...e1.files, ...e2.files, ...e3.files, sqfs, gzipNote, staleTemp, freshTemp];
  const total = await sizeOf(prunable);
  const [e1Bytes, oldBytes, staleBytes] = [await sizeOf(e1.files), await sizeOf([oldTar]), await sizeOf([staleTemp])];

  // Room for all but the two least recently used (the old tar, then e1); the stale temp file goes anyway.
  const maxSize = total - staleBytes - oldBytes - e1Bytes;
  const first = await prune(cache, ['--max-size', String(maxSize), '--json']);
  t.is(first.exitCode, 0, first.stderr);
  const result = JSON.parse(first.stdout) as { maxSize: number; freedBytes: number; keptBytes: number; areas: { area: string; removed: number; freedBytes: number }[] };
  t.like(result, { maxSize, freedBytes: staleBytes + oldBytes + e1Bytes, keptBytes: maxSize });
  t.like(result.areas.find((area) => area.area === 'build-cache'), { removed: 1, freedBytes: e1Bytes + staleBytes });
  t.like(result.areas.find((area) => area.area === 'layer-tars'), { removed: 1, freedBytes: oldBytes });
  for (const path of [oldTar, ...e1.files, staleTemp]) t.false(existsSync(path), `${path} removed`);
  for (const path of [...e2.files, ...e3.files, sqfs, gzipNote, freshTemp, ...boots]) t.true(existsSync(path), `${path} kept`);

  // A hit makes e2 the most recently used: the next entry to go is e3, though e3 was used later than e2 before.
  t.truthy(await store.get(e2.key));
  const second = await prune(cache, ['--max-size', String(maxSize - 1)]);
  t.is(second.exitCode, 0, second.stderr);
  t.regex(second.stderr, /^dockvm: freed \d+(\.\d+)? KiB \(build cache: 1 entry, [\d.]+ KiB\); [\d.]+ KiB kept of [\d.]+ KiB\n$/);
  t.true(existsSync(e2.files[0]!) && existsSync(e2.files[1]!), 'e2 kept');
  t.false(existsSync(e3.files[0]!) || existsSync(e3.files[1]!), 'e3 removed');

  const all = await prune(cache, ['--all', '--json']);
  t.is(all.exitCode, 0, all.stderr);
  t.is(JSON.parse(all.stdout).keptBytes, 0);
  for (const path of prunable) t.false(existsSync(path), `${path} removed by --all`);
  for (const path of boots) t.true(existsSync(path), `${path} kept by --all`);
});

test('DOCKVM_CACHE_MAX_SIZE is the default bound; files used in the last minutes are kept whatever the bound', async (t) => {
  const cache = join(await tempDir(t), 'cache');
  const old = await file(join(cache, 'lowers', `${'d'.repeat(64)}.sqfs`), 300_000, 3 * HOUR);
  const recent = await file(join(cache, 'lowers', `${'e'.repeat(64)}.sqfs`), 300_000, 60_000);
  const run = await prune(cache, ['--json'], { DOCKVM_CACHE_MAX_SIZE: '100K' });
  t.is(run.exitCode, 0, run.stderr);
  t.like(JSON.parse(run.stdout), { maxSize: 100 * 1024, freedBytes: 300_000, keptBytes: 300_000 });
  t.false(existsSync(old));
  t.true(existsSync(recent), 'used a minute ago: a build may be about to read it');
});

test('bad sizes and flags: exit 2, one line naming the flag', async (t) => {
  const cache = join(await tempDir(t), 'cache');
  const bad = await prune(cache, ['--max-size', 'lots']);
  t.is(bad.exitCode, 2);
  t.is(bad.stderr, 'dockvm: --max-size: "lots" is not a size: write e.g. 10G, 500M or a number of bytes\n');
  const both = await prune(cache, ['--all', '--max-size', '1G']);
  t.is(both.exitCode, 2);
  t.is(both.stderr, 'dockvm: --all drops everything: give --all or --max-size, not both\n');
  const env = await prune(cache, [], { DOCKVM_CACHE_MAX_SIZE: 'big' });
  t.is(env.exitCode, 1);
  t.is(env.stderr, 'dockvm: DOCKVM_CACHE_MAX_SIZE="big" is not a size: write e.g. 10G, 500M or a number of bytes\n');
});

/** A snapshot directory as src/vm/snapshot.ts leaves it: a sparse memory file with `written` bytes in it. */
async function snapshot(dir: string, written: number, ageMs: number): Promise<string> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'memory'), '');
  await truncate(join(dir, 'memory'), 256 * 1024 * 1024);
  const memory = await open(join(dir, 'memory'), 'r+');
  await memory.write(randomBytes(written), 0, written, 0);
  await memory.close();
  await file(join(dir, 'state'), 60_000, ageMs);
  await file(join(dir, 'snapshot.json'), 200, ageMs);
  await age(join(dir, 'memory'), ageMs);
  return dir;
}

test('VM snapshots: by the space they take (their memory is sparse), least recently used first; a crashed draft goes; refusal markers stay until --all', async (t) => {
  const cache = join(await tempDir(t), 'cache');
  const old = await snapshot(join(cache, 'snapshots', 'a'.repeat(32)), 1_000_000, 5 * HOUR);
  const recent = await snapshot(join(cache, 'snapshots', 'b'.repeat(32)), 1_000_000, 2 * HOUR);
  const draft = await snapshot(join(cache, 'snapshots', '.draft-0123456789ab.tmp'), 100_000, 3 * HOUR);
  await rm(join(draft, 'snapshot.json'));
  for (const dir of [old, recent, draft]) await age(dir, 3 * HOUR);
  const marker = await file(join(cache, 'snapshots', `${'c'.repeat(32)}.refused`), 40, 6 * HOUR);
  const taken = async (dir: string) => (await Promise.all(['memory', 'state', 'snapshot.json'].map(async (name) => (await stat(join(dir, name))).blocks * 512))).reduce((a, b) => a + b, 0);
  const [oldBytes, recentBytes] = [await taken(old), await taken(recent)];
  t.true(oldBytes < 2_000_000, 'a sparse memory file counts by what it holds');

  const run = await prune(cache, ['--max-size', String(recentBytes + 40), '--json']);
  t.is(run.exitCode, 0, run.stderr);
  t.like(JSON.parse(run.stdout).areas.find((area: { area: string }) => area.area === 'snapshots'), { removed: 2, keptBytes: recentBytes + 40 });
  t.false(existsSync(old), 'the least recently used snapshot');
  t.false(existsSync(draft), 'a draft left by a crash');
  t.true(existsSync(recent) && existsSync(marker));

  t.is((await prune(cache, ['--all'])).exitCode, 0);
  t.false(existsSync(recent) || existsSync(marker));
});

test('cache mounts: least recently used first, a use makes one recent; a lock file (its build\'s) is never pruned', async (t) => {
  const cache = join(await tempDir(t), 'cache');
  const mounts = new CacheMountStore(join(cache, 'cache-mounts'));
  const older = await file(mounts.path('/var/cache/apt', 'linux/amd64'), 100_000, 3 * HOUR);
  const newer = await file(mounts.path('/root/.cache/pip', 'linux/amd64'), 100_000, 2 * HOUR);
  const lock = await file(`${older}.lock`, 6, 4 * HOUR);
  t.is(await mounts.open('/var/cache/apt', 'linux/amd64'), older, 'a build uses the older one (open touches it)');
  const run = await prune(cache, ['--max-size', '150000', '--json'], { DOCKVM_CACHE_MOUNTS_DIR: '' });
  t.is(run.exitCode, 0, run.stderr);
  t.like(JSON.parse(run.stdout).areas.find((area: { area: string }) => area.area === 'cache-mounts'), { removed: 1, freedBytes: 100_000 });
  t.true(existsSync(older), 'used last: kept');
  t.false(existsSync(newer), 'the least recently used goes');
  const all = await prune(cache, ['--all'], { DOCKVM_CACHE_MOUNTS_DIR: '' });
  t.regex(all.stderr, /cache mounts: 1, 97\.7 KiB/);
  t.false(existsSync(older));
  t.true(existsSync(lock), 'the lock stays');
});
