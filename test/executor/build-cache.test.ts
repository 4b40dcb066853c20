// dockvm build through the build cache, with real boots counted at QEMU itself (test/helpers/qemu-counter.ts):
// an unchanged rebuild boots no VM and writes the same bytes; a touched but unchanged input still hits;
// a changed last COPY input rebuilds from that step only (one boot, the earlier steps cached); --no-cache
// boots and writes the same bytes; another machine with an empty local cache and --cache-from boots none
// and writes the same bytes.
// (Serial: one build cache across the steps; three real builds in all.)
import test from 'ava';
import { mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEBIAN_BASE_REPO_TAG, debianBaseFixture } from '../fixtures/debian.js';
import { runDockvm } from '../helpers/peers.js';
import { qemuCounter } from '../helpers/qemu-counter.js';
import { startRegistry } from '../helpers/registry.js';

// This file tests the cache: package.json's ava config turns it off for every other test file.
delete process.env.DOCKVM_BUILD_CACHE;

const CONTAINERFILE = `FROM ${DEBIAN_BASE_REPO_TAG}
RUN echo one > /one.txt
COPY a.txt /opt/a.txt
RUN useradd -u 1500 app
WORKDIR /srv
COPY b.txt /srv/b.txt
CMD ["cat", "/srv/b.txt"]
`;

interface Result {
  imageId: string;
  steps: { name: string; key: string; diffId: string; cache: string | null }[];
  vmBoots: number;
}

test.serial('unchanged rebuild: no VM, same bytes; a changed last COPY rebuilds that step only; --no-cache; --cache-from on an empty cache', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-build-cache-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { host } = await startRegistry(t);
  const repo = `docker://${host}/dockvm/containerfile-cache`;
  const qemu = await qemuCounter(t);
  writeFileSync(join(dir, 'Containerfile'), CONTAINERFILE);
  writeFileSync(join(dir, 'a.txt'), 'a\n');
  writeFileSync(join(dir, 'b.txt'), 'b, first\n');
  const machineA = join(dir, 'cache-a');
  const build = async (output: string, args: string[], cacheDir = machineA) => {
    const run = await runDockvm(['build', '--build-context', `${DEBIAN_BASE_REPO_TAG}=docker-archive:${debianBaseFixture()}`, '-t', 'localhost/dockvm-test/cached:1', '-o', join(dir, output), '--json', ...args, dir], {
      env: { ...qemu.env, DOCKVM_BUILD_CACHE_DIR: cacheDir },
    });
    t.is(run.exitCode, 0, run.stderr);
    return { result: JSON.parse(run.stdout) as Result, bytes: readFileSync(join(dir, output)), stderr: run.stderr };
  };
  const hits = (result: Result) => result.steps.map((step) => step.cache);

  const cold = await build('cold.tar', ['--cache-to', repo]);
  t.is(qemu.vms(), 1, 'the first build boots once for its stage');
  t.deepEqual(hits(cold.result), [null, null, null, null, null]);
  t.is(cold.result.vmBoots, 1);

  const unchanged = await build('unchanged.tar', []);
  t.is(qemu.vms(), 1, 'an unchanged rebuild boots no VM');
  t.deepEqual(hits(unchanged.result), ['local', 'local', 'local', 'local', 'local']);
  t.true(unchanged.bytes.equals(cold.bytes), 'the same archive bytes');
  t.regex(unchanged.stderr, /#\d+ \[3\/6\] COPY a\.txt \/opt\/a\.txt\n#\d+ CACHED/, 'progress says CACHED, as BuildKit does');

  // A fresh checkout (every mtime newer) changes nothing the layer holds: mtimes are clamped.
  utimesSync(join(dir, 'a.txt'), new Date(), new Date());
  const touched = await build('touched.tar', []);
  t.is(qemu.vms(), 1, 'a touched input with the same content still hits');
  t.true(touched.bytes.equals(cold.bytes));

  writeFileSync(join(dir, 'b.txt'), 'b, second\n');
  const changed = await build('changed.tar', ['--cache-to', repo]);
  t.is(qemu.vms(), 2, 'a changed last COPY boots once');
  t.deepEqual(hits(changed.result), ['local', 'local', 'local', 'local', null], 'only the changed step and none before it is built');
  const layers = (result: Result) => result.steps.map(({ key, diffId }) => ({ key, diffId }));
  t.deepEqual(layers(changed.result).slice(0, 4), layers(cold.result).slice(0, 4), 'the steps before it keep their keys and layers');
  t.not(changed.result.steps[4]!.diffId, cold.result.steps[4]!.diffId);
  t.false(changed.bytes.equals(cold.bytes));

  const noCache = await build('no-cache.tar', ['--no-cache']);
  t.is(qemu.vms(), 3, '--no-cache boots');
  t.deepEqual(hits(noCache.result), [null, null, null, null, null]);
  t.true(noCache.bytes.equals(changed.bytes), '--no-cache: the same archive bytes');

  // Another machine: an empty local cache, the registry the first one pushed to.
  const fetched = await build('fetched.tar', ['--cache-from', repo], join(dir, 'cache-b'));
  t.is(qemu.vms(), 3, '--cache-from: no VM boot');
  t.deepEqual(hits(fetched.result), [repo, repo, repo, repo, repo]);
  t.true(fetched.bytes.equals(changed.bytes), '--cache-from: the same archive bytes');
});
