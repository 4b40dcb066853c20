// RUN --mount=type=cache content kept between builds (as BuildKit keeps it), real boots: a second build
// sees what the first left in the cache, with its directory's owner and mode; no layer of either holds
// it; another id starts empty; the content is not in the build cache key (the first Containerfile, built
// again after the cache changed, is a hit without a VM); a locked mount leaves no lock behind; `dockvm
// cache prune --all` removes the kept tars. Two builds at once over a sharing=locked mount take turns:
// each sees what the other appended. While another build holds the lock, sharing=private starts empty and
// keeps nothing, and sharing=shared does not wait. from=STAGE,source=DIR seeds a cache that has nothing kept.
import test from 'ava';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { CacheMountStore } from '../../src/cache/cache-mounts.js';
import { readTar } from '../../src/layer/tar.js';
import { openImage } from '../../src/transport/open.js';
import { DEBIAN_BASE_REPO_TAG, debianBaseFixture } from '../fixtures/debian.js';
import { runDockvm } from '../helpers/peers.js';
import { qemuCounter } from '../helpers/qemu-counter.js';
import { writeTar } from '../helpers/tar.js';

const scratch = mkdtempSync(join(tmpdir(), 'dockvm-cache-mounts-'));
test.after.always(() => rmSync(scratch, { recursive: true, force: true }));

/** Each layer's entries with the text of its small files. */
async function layers(archive: string): Promise<Map<string, { mode: number; uid: number; text: string }>[]> {
  const image = await openImage(archive);
  const result: Map<string, { mode: number; uid: number; text: string }>[] = [];
  try {
    for (const layer of image.layers) {
      const files = new Map<string, { mode: number; uid: number; text: string }>();
      for await (const { entry, body } of readTar(await layer.openTar(), { source: archive })) {
        const chunks: Buffer[] = [];
        for await (const chunk of body) if (entry.size < 4096) chunks.push(chunk as Buffer);
        files.set(entry.path, { mode: entry.mode, uid: entry.uid, text: Buffer.concat(chunks).toString() });
      }
      result.push(files);
    }
  } finally {
    await image.close();
  }
  return result;
}

test.serial('a cache mount keeps its content between builds, in no layer and no cache key; another id is empty; prune removes them', async (t) => {
  const mountsDir = join(scratch, 'cache-mounts');
  const env = {
    DOCKVM_CACHE_MOUNTS_DIR: mountsDir,
    // a build cache (the tests' default is none) of its own, so that the first build runs its step every time this test runs
    DOCKVM_BUILD_CACHE: '',
    DOCKVM_BUILD_CACHE_DIR: join(scratch, 'build-cache'),
  };
  const context = `${DEBIAN_BASE_REPO_TAG}=docker-archive:${debianBaseFixture()}`;
  const write = async (name: string, lines: string[]) => {
    const dir = join(scratch, name);
    await mkdir(dir, { recursive: true });
    writeFileSync(join(dir, 'Containerfile'), [`FROM ${DEBIAN_BASE_REPO_TAG}`, ...lines, ''].join('\n'));
    return dir;
  };
  const first = await write('first', ['RUN --mount=type=cache,target=/var/cache/x,uid=1000,mode=0700 echo from-build-1 > /var/cache/x/kept && echo one > /one.txt']);
  const second = await write('second', [
    'RUN --mount=type=cache,target=/var/cache/x,sharing=locked cat /var/cache/x/kept > /seen.txt && stat -c "%a %u" /var/cache/x > /mode.txt && echo from-build-2 >> /var/cache/x/kept',
    'RUN --mount=type=cache,target=/var/cache/x,id=other ls -A /var/cache/x > /other.txt',
  ]);
  const qemu = await qemuCounter(t);
  const build = (dir: string, out: string) => runDockvm(['build', '--build-context', context, '-o', out, dir], { env: { ...env, ...qemu.env } });

  const out1 = join(scratch, 'first.tar');
  const run1 = await build(first, out1);
  t.is(run1.exitCode, 0, run1.stderr);
  t.is(readdirSync(mountsDir).filter((name) => name.endsWith('.tar')).length, 1, 'the cache mount is kept, one tar');

  const out2 = join(scratch, 'second.tar');
  const run2 = await build(second, out2);
  t.is(run2.exitCode, 0, run2.stderr);
  t.is(qemu.vms(), 2, 'one VM per build');
  const [seen, other] = (await layers(out2)).slice(-2);
  t.is(seen?.get('seen.txt')?.text, 'from-build-1\n', "the second build sees the first build's file");
  t.is(seen?.get('mode.txt')?.text, '700 1000\n', "with the cache directory's mode and owner the first build gave it");
  t.is(other?.get('other.txt')?.text, '', 'a cache mount with another id starts empty');
  for (const [archive, image] of [[out1, await layers(out1)], [out2, await layers(out2)]] as const) {
    for (const files of image) {
      t.false([...files.keys()].some((path) => path === 'var/cache/x' || path.startsWith('var/cache/x/')), `no layer of ${archive} holds the cache mount`);
    }
  }
  const names = readdirSync(mountsDir);
  t.is(names.filter((name) => name.endsWith('.tar')).length, 2, 'each id is a tar of its own');
  t.deepEqual(names.filter((name) => name.endsWith('.lock')), [], 'the locked mount left no lock');

  // the cache's content changed (the second build appended to it): the first Containerfile is still a hit
  const again = await build(first, join(scratch, 'again.tar'));
  t.is(again.exitCode, 0, again.stderr);
  t.is(qemu.vms(), 2, "a cache mount's content is not in the step's key: no VM");

  const prune = await runDockvm(['cache', 'prune', '--all'], {
    env: { DOCKVM_CACHE: join(scratch, 'empty-cache'), DOCKVM_CACHE_MOUNTS_DIR: mountsDir, DOCKVM_BUILD_CACHE_DIR: '', DOCKVM_SNAPSHOT_DIR: '', DOCKVM_CACHE_MAX_SIZE: '' },
  });
  t.is(prune.exitCode, 0, prune.stderr);
  t.regex(prune.stderr, /cache mounts: 2,/);
  t.deepEqual(readdirSync(mountsDir), [], 'prune --all removes the kept cache mounts');
});

test.serial('sharing=locked: two builds at once take turns (one waits for the other), so neither loses what the other kept', async (t) => {
  const dir = mkdtempSync(join(scratch, 'locked-'));
  const env = { DOCKVM_CACHE_MOUNTS_DIR: join(dir, 'cache-mounts'), DOCKVM_BUILD_CACHE: 'off' };
  const context = `${DEBIAN_BASE_REPO_TAG}=docker-archive:${debianBaseFixture()}`;
  const step = (name: string) => `RUN --mount=type=cache,target=/c,sharing=locked cat /c/log > /seen 2>/dev/null; sleep 3; echo ${name} >> /c/log`;
  const qemu = await qemuCounter(t);
  const build = async (name: string, lines: string[]) => {
    await mkdir(join(dir, name));
    writeFileSync(join(dir, name, 'Containerfile'), [`FROM ${DEBIAN_BASE_REPO_TAG}`, ...lines, ''].join('\n'));
    return runDockvm(['build', '--build-context', context, '-o', join(dir, `${name}.tar`), join(dir, name)], { env: { ...env, ...qemu.env } });
  };
  const [a, b] = await Promise.all([build('a', [step('a')]), build('b', [step('b')])]);
  t.is(a.exitCode, 0, a.stderr);
  t.is(b.exitCode, 0, b.stderr);
  const waited = [a, b].filter((run) => /warning: waiting for the cache mount id=\/c \(sharing=locked\), which another build \(pid \d+\) holds/.test(run.stderr));
  t.is(waited.length, 1, 'one build waited for the other');
  const read = await build('read', ['RUN --mount=type=cache,target=/c cat /c/log > /log']);
  t.is(read.exitCode, 0, read.stderr);
  const log = (await layers(join(dir, 'read.tar'))).at(-1)?.get('log')?.text;
  t.deepEqual(log?.split('\n').filter(Boolean).sort(), ['a', 'b'], 'the cache holds what both appended');
  t.is(qemu.vms(), 3);
});

test.serial('while another build holds the lock: sharing=private starts empty and keeps nothing, sharing=shared sees the content and does not wait', async (t) => {
  const dir = mkdtempSync(join(scratch, 'private-'));
  const store = new CacheMountStore(join(dir, 'cache-mounts'));
  const seeded = await writeTar([
    [{ path: '', type: 'directory', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 1 }],
    [{ path: 'kept', type: 'file', mode: 0o644, uid: 0, gid: 0, size: 3, mtime: 1 }, Buffer.from('old')],
  ]);
  for (const id of ['p', 's']) {
    await store.keep(id, 'linux/amd64', () => Readable.from(seeded));
    writeFileSync(`${store.path(id, 'linux/amd64')}.lock`, `${process.pid}\n`); // held by this (live) process
  }
  const before = readFileSync(store.path('p', 'linux/amd64'));
  await mkdir(join(dir, 'ctx'));
  writeFileSync(
    join(dir, 'ctx', 'Containerfile'),
    [
      `FROM ${DEBIAN_BASE_REPO_TAG}`,
      'RUN --mount=type=cache,target=/p,id=p,sharing=private ls -A /p > /private.txt && echo new > /p/new',
      'RUN --mount=type=cache,target=/s,id=s ls -A /s > /shared.txt',
      '',
    ].join('\n'),
  );
  const qemu = await qemuCounter(t);
  const out = join(dir, 'out.tar');
  const run = await runDockvm(['build', '--build-context', `${DEBIAN_BASE_REPO_TAG}=docker-archive:${debianBaseFixture()}`, '-o', out, join(dir, 'ctx')], {
    env: { DOCKVM_CACHE_MOUNTS_DIR: store.dir, DOCKVM_BUILD_CACHE: 'off', ...qemu.env },
  });
  t.is(run.exitCode, 0, run.stderr);
  const [privateLayer, sharedLayer] = (await layers(out)).slice(-2);
  t.is(privateLayer?.get('private.txt')?.text, '', 'private: starts empty while the lock is held');
  t.is(sharedLayer?.get('shared.txt')?.text, 'kept\n', 'shared: the kept content, no waiting');
  t.deepEqual(readFileSync(store.path('p', 'linux/amd64')), before, 'private kept nothing');
  for (const id of ['p', 's']) t.is(readFileSync(`${store.path(id, 'linux/amd64')}.lock`, 'utf8'), `${process.pid}\n`, `the holder's lock of ${id} stays`);
  t.notRegex(run.stderr, /waiting for the cache mount/);
  t.is(qemu.vms(), 1);
});

// from=STAGE,source=PATH seeds the cache (BuildKit's mount from=): a cache with nothing kept starts as the
// seed is; once kept, the kept content is what the next build sees; a seed with other content is a cache
// of its own (BuildKit keys it by id and the from= ref).
test.serial('type=cache,from=STAGE,source=DIR: starts as the seed, then keeps its content; another seed is another cache', async (t) => {
  const dir = mkdtempSync(join(scratch, 'seeded-'));
  const env = { DOCKVM_CACHE_MOUNTS_DIR: join(dir, 'cache-mounts'), DOCKVM_BUILD_CACHE: '', DOCKVM_BUILD_CACHE_DIR: join(dir, 'build-cache') };
  const context = `${DEBIAN_BASE_REPO_TAG}=docker-archive:${debianBaseFixture()}`;
  const qemu = await qemuCounter(t);
  const build = async (name: string, seed: string, run: string) => {
    await mkdir(join(dir, name));
    writeFileSync(
      join(dir, name, 'Containerfile'),
      [
        `FROM ${DEBIAN_BASE_REPO_TAG} AS seed`,
        `RUN mkdir /seed && echo ${seed} > /seed/file && chown 1000 /seed/file`,
        `FROM ${DEBIAN_BASE_REPO_TAG}`,
        `RUN --mount=type=cache,target=/c,from=seed,source=/seed ${run}`,
        '',
      ].join('\n'),
    );
    const out = join(dir, `${name}.tar`);
    const result = await runDockvm(['build', '--build-context', context, '-o', out, join(dir, name)], { env: { ...env, ...qemu.env } });
    t.is(result.exitCode, 0, result.stderr);
    return (await layers(out)).at(-1)!;
  };
  const first = await build('first', 'from-seed', 'cp /c/file /first && stat -c %u /c/file > /owner && echo added >> /c/file');
  t.is(first.get('first')?.text, 'from-seed\n', 'nothing kept yet: the cache starts as the seed stage has /seed');
  t.is(first.get('owner')?.text, '1000\n', "with the seed's owners");
  t.false([...first.keys()].some((path) => path === 'c' || path.startsWith('c/')), 'the cache is in no layer');
  t.is(qemu.vms(), 2, 'the seed stage and the final stage');

  const second = await build('second', 'from-seed', 'cp /c/file /second');
  t.is(second.get('second')?.text, 'from-seed\nadded\n', 'kept: the next build sees what the first left, not the seed again');
  t.is(qemu.vms(), 3, 'the seed stage was a build-cache hit');

  const third = await build('third', 'from-other-seed', 'cp /c/file /third');
  t.is(third.get('third')?.text, 'from-other-seed\n', 'another seed: a cache of its own, starting as that seed');
  t.is(readdirSync(env.DOCKVM_CACHE_MOUNTS_DIR).filter((name) => name.endsWith('.tar')).length, 2, 'one kept tar per seed');
});
