// run-as-root through the build cache, with real boots counted at QEMU itself (test/helpers/qemu-counter.ts):
// an unchanged spec boots no VM and writes the same archive bytes; --no-cache boots and writes the same
// bytes; a machine with an empty local cache and --cache-from boots none and writes the same bytes; a
// changed script boots. The spec's env holds a secret, which no readable part of the cache entry (its
// file, its registry config) shows.
// (Serial: one build cache across the steps; three real builds in all.)
import test from 'ava';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { openRegistryImage } from '../../src/transport/registry/index.js';
import { debianBaseFixture } from '../fixtures/debian.js';
import { runDockvm } from '../helpers/peers.js';
import { qemuCounter } from '../helpers/qemu-counter.js';
import { startRegistry } from '../helpers/registry.js';

// This file tests the cache: package.json's ava config turns it off for every other test file.
delete process.env.DOCKVM_BUILD_CACHE;

const SECRET = 'hunter2-do-not-cache-me';
const SCRIPT = 'echo "$TOKEN" | sha256sum > /srv/token.sha256\ncp /opt/app/greeting /srv/greeting\nchown 1000:1000 /srv/greeting\n';

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-cache-rar-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

interface Result {
  layers: { diffId: string }[];
  cache: { key: string; hit: string | null } | null;
}

test.serial('an unchanged spec boots no VM and writes the same bytes; --no-cache, --cache-from, a changed script', async (t) => {
  const dir = tempDir(t);
  const { host } = await startRegistry(t);
  const repo = `docker://${host}/dockvm/build-cache`;
  const qemu = await qemuCounter(t);
  mkdirSync(join(dir, 'root/opt/app'), { recursive: true });
  writeFileSync(join(dir, 'root/opt/app/greeting'), 'hello from copyToRoot\n');
  const spec = join(dir, 'spec.json');
  const writeSpec = (script: string) =>
    writeFileSync(spec, JSON.stringify({ name: 'localhost/dockvm-test/cached', tag: '1', fromImage: debianBaseFixture(), copyToRoot: 'root', runAsRoot: script, env: { TOKEN: SECRET }, output: 'image.tar' }));
  writeSpec(SCRIPT);
  const machineA = join(dir, 'cache-a');
  const build = async (output: string, args: string[], cacheDir = machineA) => {
    const started = performance.now();
    const run = await runDockvm(['run-as-root', spec, '-o', join(dir, output), '--json', ...args], { env: { ...qemu.env, DOCKVM_BUILD_CACHE_DIR: cacheDir } });
    const seconds = (performance.now() - started) / 1000;
    t.is(run.exitCode, 0, run.stderr);
    return { result: JSON.parse(run.stdout) as Result, bytes: readFileSync(join(dir, output)), seconds, stderr: run.stderr };
  };

  const cold = await build('cold.tar', ['--cache-to', repo]);
  t.is(qemu.vms(), 1, 'the first build boots');
  t.like(cold.result.cache, { hit: null });
  const key = cold.result.cache!.key;
  t.regex(key, /^sha256:[0-9a-f]{64}$/);

  const hit = await build('hit.tar', []);
  t.is(qemu.vms(), 1, 'an unchanged spec boots no VM');
  t.deepEqual(hit.result.cache, { key, hit: 'local' });
  t.true(hit.bytes.equals(cold.bytes), 'the same archive bytes');
  t.log(`cold build ${cold.seconds.toFixed(2)} s, unchanged rebuild ${hit.seconds.toFixed(2)} s (${(hit.seconds / cold.seconds).toFixed(3)} of cold)`);

  const noCache = await build('no-cache.tar', ['--no-cache']);
  t.is(qemu.vms(), 2, '--no-cache boots');
  t.deepEqual(noCache.result.cache, { key, hit: null });
  t.true(noCache.bytes.equals(cold.bytes), '--no-cache: the same archive bytes');

  // Another machine: an empty local cache, the registry the first one pushed to.
  const machineB = join(dir, 'cache-b');
  const fetched = await build('fetched.tar', ['--cache-from', repo], machineB);
  t.is(qemu.vms(), 2, '--cache-from: no VM boot');
  t.deepEqual(fetched.result.cache, { key, hit: repo });
  t.true(fetched.bytes.equals(cold.bytes), '--cache-from: the same archive bytes');
  t.regex(fetched.stderr, /layer from the build cache in docker:\/\/.*: no VM booted|^$/);

  // The secret went into the key (hashed) and nowhere readable.
  const entries = readdirSync(join(machineB, 'entries'));
  t.deepEqual(entries, [`${key.slice('sha256:'.length)}.json`]);
  t.false(readFileSync(join(machineB, 'entries', entries[0]!), 'utf8').includes(SECRET), 'not in the entry');
  const image = await openRegistryImage(`${repo}:${key.slice('sha256:'.length)}`, { authFiles: [] });
  t.teardown(() => image.close());
  t.false(image.rawConfig.toString().includes(SECRET), 'not in the registry entry\'s config');

  writeSpec(`${SCRIPT}echo changed > /srv/changed\n`);
  const changed = await build('changed.tar', []);
  t.is(qemu.vms(), 3, 'a changed script boots');
  t.not(changed.result.cache!.key, key);
  t.not(changed.result.layers.at(-1)!.diffId, cold.result.layers.at(-1)!.diffId);
  t.is(changed.result.layers[0]!.diffId, cold.result.layers[0]!.diffId, 'the same base');
});
