// dockvm refresh without build VMs: specs with copyToRoot and no runAsRoot build their layer on the host,
// so every decision refresh makes (up-to-date, rebuild, push, fail alone) is tested here quickly, against
// docker-registry on loopback. The VM story is in story.test.ts.
import test from 'ava';
import { createHash } from 'node:crypto';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openImage } from '../../src/transport/index.js';
import { pushImage, pushIndex, resolveDigest } from '../../src/transport/registry/index.js';
import { MediaType } from '../../src/image/media-types.js';
import { fileLayer, testImage } from '../registry/images.js';
import { refresh, type RefreshResult } from '../../src/refresh/refresh.js';
import { runDockvm } from '../helpers/peers.js';
import { countQemuInProcess, type QemuCounter } from '../helpers/qemu-counter.js';
import { freePort, startRegistry } from '../helpers/registry.js';
import { baseArchive, isolatedEnv, noAuthFiles, pushBase, tempDir, writeSpec } from './helpers.js';

const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');

// Nothing in this file boots a VM: every QEMU start of this process and its dockvm children is counted.
let qemu: QemuCounter;
test.before(async () => {
  qemu = await countQemuInProcess();
});

async function appRoot(dir: string, content = 'port=80\n'): Promise<void> {
  await mkdir(join(dir, 'root/etc'), { recursive: true });
  await writeFile(join(dir, 'root/etc/app.conf'), content);
}

test('up-to-date when nothing moved; rebuilt, with the reason, when the spec, copyToRoot or output changed', async (t) => {
  const registry = await startRegistry(t);
  const dir = await tempDir(t);
  const base = `docker://${registry.host}/dockvm/base:stable`;
  const { digest } = await pushBase(dir, 'v1', base);
  await appRoot(dir);
  const spec = await writeSpec(dir, 'app', { fromImage: base, copyToRoot: 'root' });
  const options = { authFiles: noAuthFiles(dir) };

  const [first] = await refresh([spec], options);
  t.like(first, { status: 'rebuilt', baseReference: base, baseDigest: digest, previousBaseDigest: null, reason: 'no lock file yet', output: join(dir, 'app.tar'), bootedVm: false });
  t.is(qemu.vms(), 0, 'rebuilt on the host, without a VM');
  const archive = await readFile(join(dir, 'app.tar'));
  const lockText = await readFile(join(dir, 'app.lock.json'), 'utf8');
  const image = await openImage(join(dir, 'app.tar'));
  t.teardown(() => image.close());
  t.like(JSON.parse(lockText), { baseReference: base, baseDigest: digest, output: 'app.tar', outputSize: archive.length, outputSha256: sha(archive), imageName: 'dockvm-test/app', imageTag: '1', configDigest: image.configDigest });

  const [second] = await refresh([spec], options);
  t.like(second, { status: 'up-to-date', baseDigest: digest, previousBaseDigest: digest, reason: null });
  t.is(await readFile(join(dir, 'app.lock.json'), 'utf8'), lockText);

  // Reformatting the spec changes nothing; the output gone is rebuilt, to the same bytes and the same lock.
  await writeFile(spec, JSON.stringify(JSON.parse(await readFile(spec, 'utf8'))));
  t.like((await refresh([spec], options))[0], { status: 'up-to-date' });
  await rm(join(dir, 'app.tar'));
  t.like((await refresh([spec], options))[0], { status: 'rebuilt', reason: 'the output is missing' });
  t.deepEqual(await readFile(join(dir, 'app.tar')), archive);
  t.is(await readFile(join(dir, 'app.lock.json'), 'utf8'), lockText);

  await appRoot(dir, 'port=81\n');
  const [changed] = await refresh([spec], options);
  t.like(changed, { status: 'rebuilt', reason: 'the spec, its copyToRoot or its scripts changed', baseDigest: digest, previousBaseDigest: digest });
  t.notDeepEqual(await readFile(join(dir, 'app.tar')), archive);
  t.not(await readFile(join(dir, 'app.lock.json'), 'utf8'), lockText);
});

test('a local archive base is known by its config digest; a new archive rebuilds', async (t) => {
  const dir = await tempDir(t);
  const v1 = await openImage(await baseArchive(dir, 'v1'));
  const v2 = await openImage(await baseArchive(dir, 'v2'));
  t.teardown(() => Promise.all([v1.close(), v2.close()]));
  await writeFile(join(dir, 'base.tar'), await readFile(join(dir, 'base-v1.tar')));
  const spec = await writeSpec(dir, 'local', { fromImage: 'base.tar', extraCommands: 'echo x > marker' });

  t.like((await refresh([spec]))[0], { status: 'rebuilt', baseReference: 'base.tar', baseDigest: v1.configDigest });
  t.like((await refresh([spec]))[0], { status: 'up-to-date', baseDigest: v1.configDigest });
  await writeFile(join(dir, 'base.tar'), await readFile(join(dir, 'base-v2.tar')));
  const [moved] = await refresh([spec]);
  t.like(moved, { status: 'rebuilt', baseDigest: v2.configDigest, previousBaseDigest: v1.configDigest, reason: `the base moved: ${v1.configDigest} → ${v2.configDigest}` });
  const built = await openImage(join(dir, 'local.tar'));
  t.teardown(() => built.close());
  t.deepEqual(built.layers.slice(0, -1).map((layer) => layer.diffId), v2.layers.map((layer) => layer.diffId));
});

test('--push REF with {name}/{tag}: each image pushed, recorded in the lock; a new destination pushes again', async (t) => {
  const registry = await startRegistry(t);
  const dir = await tempDir(t);
  await appRoot(dir);
  const specs = [await writeSpec(dir, 'one', { copyToRoot: 'root' }), await writeSpec(dir, 'two', { copyToRoot: 'root', tag: null })];
  const push = `${registry.host}/mirror/{name}:{tag}`;
  const options = { authFiles: noAuthFiles(dir), push, jobs: 2 };

  const results = await refresh(specs, options);
  t.deepEqual(results.map((result) => result.status), ['rebuilt', 'rebuilt']);
  const two = JSON.parse(await readFile(join(dir, 'two.lock.json'), 'utf8')) as { imageTag: string; pushedTo: string; pushedDigest: string };
  t.regex(two.imageTag, /^[0-9a-f]{32}$/, 'a tag derived from the content');
  t.is(results[0]!.pushedTo, `docker://${registry.host}/mirror/dockvm-test/one:1`);
  t.is(results[1]!.pushedTo, `docker://${registry.host}/mirror/dockvm-test/two:${two.imageTag}`);
  t.is<string | null, string | null>(two.pushedTo, results[1]!.pushedTo);
  for (const result of results) {
    const { digest } = await resolveDigest(result.pushedTo!, { authFiles: noAuthFiles(dir) });
    t.is(result.pushedDigest, digest);
  }

  t.deepEqual((await refresh(specs, options)).map((result) => result.status), ['up-to-date', 'up-to-date']);
  const [moved] = await refresh([specs[0]!], { ...options, push: `${registry.host}/elsewhere/{name}` });
  t.like(moved, { status: 'rebuilt', reason: `not pushed to docker://${registry.host}/elsewhere/dockvm-test/one:1 yet`, pushedTo: `docker://${registry.host}/elsewhere/dockvm-test/one:1` });
});

test('registry down: that spec fails naming the registry, its lock and output stay as they were', async (t) => {
  const dir = await tempDir(t);
  const spec = await writeSpec(dir, 'app', { extraCommands: 'echo x > marker' });
  t.like((await refresh([spec]))[0], { status: 'rebuilt' });
  const lockText = await readFile(join(dir, 'app.lock.json'), 'utf8');
  const outputBefore = await stat(join(dir, 'app.tar'));

  const down = `127.0.0.1:${await freePort()}`;
  await writeSpec(dir, 'app', { extraCommands: 'echo x > marker', fromImage: `docker://${down}/dockvm/base:stable` });
  const run = await runDockvm(['refresh', 'app.json', '--json'], { cwd: dir, env: isolatedEnv(dir) });
  t.is(run.exitCode, 1, run.stderr);
  const [result] = JSON.parse(run.stdout) as RefreshResult[];
  t.like(result, { spec: 'app.json', status: 'failed', baseDigest: null, previousBaseDigest: null, bootedVm: false });
  t.is(qemu.vms(), 0);
  t.true(result!.reason!.includes(down), result!.reason!);
  t.true(run.stderr.includes(`failed     app.json: ${result!.reason}`), run.stderr);
  t.true(run.stderr.endsWith('dockvm: 1 of 1 spec(s) failed to refresh; their locks are unchanged\n'), run.stderr);
  t.is(await readFile(join(dir, 'app.lock.json'), 'utf8'), lockText);
  t.is((await stat(join(dir, 'app.tar'))).mtimeMs, outputBefore.mtimeMs);
});

test('a corrupt lock: that spec fails saying which file and what to do; the lock is left as it was', async (t) => {
  const dir = await tempDir(t);
  await writeSpec(dir, 'app', { extraCommands: 'echo x > marker' });
  await writeFile(join(dir, 'app.lock.json'), '{"lockVersion": 1, "baseDig');
  const run = await runDockvm(['refresh', 'app.json', '--json'], { cwd: dir, env: isolatedEnv(dir) });
  t.is(run.exitCode, 1, run.stderr);
  const [result] = JSON.parse(run.stdout) as RefreshResult[];
  t.is(result!.status, 'failed');
  t.regex(result!.reason!, new RegExp(`^the lock file ${join(dir, 'app.lock.json')} is corrupt \\(not JSON: .*\\); delete it to force a rebuild$`));
  t.is(await readFile(join(dir, 'app.lock.json'), 'utf8'), '{"lockVersion": 1, "baseDig');
  await t.throwsAsync(stat(join(dir, 'app.tar')), { code: 'ENOENT' }, 'nothing was built');
});

test('one of two specs fails: the other is rebuilt, the JSON lists both in path order, exit 1', async (t) => {
  const registry = await startRegistry(t);
  const dir = await tempDir(t);
  const base = `docker://${registry.host}/dockvm/base:stable`;
  const { digest } = await pushBase(dir, 'v1', base);
  await writeSpec(dir, 'good', { fromImage: base, extraCommands: 'echo ok > marker' });
  await writeSpec(dir, 'bad', { fromImage: base, extraCommands: 'echo broken >&2; exit 3' });
  const run = await runDockvm(['refresh', 'good.json', 'bad.json', '--jobs', '2', '--json'], { cwd: dir, env: isolatedEnv(dir) });
  t.is(run.exitCode, 1, run.stderr);
  const results = JSON.parse(run.stdout) as RefreshResult[];
  t.deepEqual(Object.keys(results[0]!), ['spec', 'status', 'baseReference', 'baseDigest', 'previousBaseDigest', 'output', 'reason', 'bootedVm', 'pushedTo', 'pushedDigest']);
  t.like(results[0], { spec: 'bad.json', status: 'failed', baseDigest: digest });
  t.regex(results[0]!.reason!, /^extraCommands failed with exit code 3; its stderr ends with:\nbroken$/);
  t.like(results[1], { spec: 'good.json', status: 'rebuilt', baseDigest: digest, output: join(dir, 'good.tar') });
  t.like(JSON.parse(await readFile(join(dir, 'good.lock.json'), 'utf8')), { baseDigest: digest });
  await t.throwsAsync(stat(join(dir, 'bad.lock.json')), { code: 'ENOENT' });
  await t.throwsAsync(stat(join(dir, 'bad.tar')), { code: 'ENOENT' });
  t.true(run.stderr.includes('dockvm: 1 of 2 spec(s) failed'), run.stderr);
});

test('--shard 2/3 refreshes only its share of the sorted specs; bad flags are usage errors', async (t) => {
  const dir = await tempDir(t);
  for (const name of ['a', 'b', 'c', 'd']) await writeSpec(dir, name, { extraCommands: `echo ${name} > marker` });
  const run = await runDockvm(['refresh', 'd.json', 'c.json', 'b.json', 'a.json', '--shard', '2/3', '--json'], { cwd: dir, env: isolatedEnv(dir) });
  t.is(run.exitCode, 0, run.stderr);
  t.deepEqual((JSON.parse(run.stdout) as RefreshResult[]).map((result) => [result.spec, result.status]), [['b.json', 'rebuilt']]);
  t.deepEqual(await Promise.all(['a', 'b', 'c', 'd'].map((name) => stat(join(dir, `${name}.lock.json`)).then(() => true, () => false))), [false, true, false, false]);

  const badShard = await runDockvm(['refresh', 'a.json', '--shard', '4/3'], { cwd: dir });
  t.is(badShard.exitCode, 2);
  t.regex(badShard.stderr, /--shard 4\/3: expected I\/N/);
  const badPush = await runDockvm(['refresh', 'a.json', 'b.json', '--push', '127.0.0.1:5000/app'], { cwd: dir });
  t.is(badPush.exitCode, 2);
  t.regex(badPush.stderr, /would send 2 images to one place/);
});

test('a base behind basic auth: --creds reach both the tag lookup and the build\'s pull of the pinned base', async (t) => {
  const user = { username: 'nightly', password: 'pa:ss' };
  const registry = await startRegistry(t, { htpasswd: user });
  const dir = await tempDir(t);
  const base = `docker://${registry.host}/dockvm/base:stable`;
  const image = await openImage(await baseArchive(dir, 'v1'));
  t.teardown(() => image.close());
  const { digest } = await pushImage(image, base, { creds: `${user.username}:${user.password}`, authFiles: noAuthFiles(dir) });
  await writeSpec(dir, 'app', { fromImage: base, extraCommands: 'echo ok > marker' });

  const anonymous = await runDockvm(['refresh', 'app.json', '--json'], { cwd: dir, env: isolatedEnv(dir) });
  t.is(anonymous.exitCode, 1);
  t.regex((JSON.parse(anonymous.stdout) as RefreshResult[])[0]!.reason!, /401|credentials|log in/i);

  const run = await runDockvm(['refresh', 'app.json', '--json', '--creds', `${user.username}:${user.password}`], { cwd: dir, env: isolatedEnv(dir) });
  t.is(run.exitCode, 0, run.stderr);
  t.like((JSON.parse(run.stdout) as RefreshResult[])[0], { status: 'rebuilt', baseDigest: digest });
  t.false(run.stdout.includes(user.password) || run.stderr.includes(user.password), 'the password is never printed');
  const built = await openImage(join(dir, 'app.tar'));
  t.teardown(() => built.close());
  t.deepEqual(built.layers.slice(0, -1).map((layer) => layer.diffId), image.layers.map((layer) => layer.diffId));
});

test('platforms: every platform rebuilt over its own image of an index base, written and pushed as an index; up-to-date until the index moves', async (t) => {
  const registry = await startRegistry(t);
  const dir = await tempDir(t);
  const base = `docker://${registry.host}/dockvm/multi-base:stable`;
  const pushBases = async (version: string) => {
    const layer = (architecture: string) => fileLayer('etc/base', `${version} ${architecture}\n`);
    const images = [testImage([await layer('amd64')], { architecture: 'amd64', marker: version }), testImage([await layer('arm64')], { architecture: 'arm64', variant: 'v8', marker: version })];
    return { images, index: await pushIndex(images, base, { authFiles: noAuthFiles(dir) }) };
  };
  const v1 = await pushBases('v1');
  await appRoot(dir);
  const spec = await writeSpec(dir, 'multi', { fromImage: base, copyToRoot: 'root', platforms: ['linux/amd64', 'linux/arm64'], output: 'oci:out' });
  const options = { authFiles: noAuthFiles(dir), push: `${registry.host}/mirror/{name}:{tag}` };

  const [first] = await refresh([spec], options);
  t.like(first, { status: 'rebuilt', baseDigest: v1.index.digest, bootedVm: false, pushedTo: `docker://${registry.host}/mirror/dockvm-test/multi:1` });
  t.is(qemu.boots(), 0);
  // the layout's index: each platform's image over that platform's base, labelled with its platform
  const layoutIndex = JSON.parse(await readFile(join(dir, 'out', 'index.json'), 'utf8'));
  t.deepEqual(layoutIndex.manifests.map((m: { mediaType: string; annotations: unknown }) => [m.mediaType, m.annotations]), [[MediaType.OciIndex, { 'org.opencontainers.image.ref.name': '1' }]]);
  const lock = JSON.parse(await readFile(join(dir, 'multi.lock.json'), 'utf8'));
  t.is(lock.configDigest, layoutIndex.manifests[0].digest, 'the lock records the index');
  for (const [i, architecture] of ['amd64', 'arm64'].entries()) {
    for (const source of [`oci:${join(dir, 'out')}:1`, `docker://${registry.host}/mirror/dockvm-test/multi@${first!.pushedDigest}`]) {
      const image = await openImage(source, { platform: { os: 'linux', architecture }, registry: { authFiles: noAuthFiles(dir) } });
      t.teardown(() => image.close());
      t.is(image.config.architecture, architecture, source);
      t.is(image.layers[0]!.diffId, v1.images[i]!.layers[0]!.diffId, `${source}: the ${architecture} base`);
      t.is(image.layers.length, 2);
    }
  }
  // the pushed tag names an index of both platforms
  const pushed = await resolveDigest(`docker://${registry.host}/mirror/dockvm-test/multi:1`, { authFiles: noAuthFiles(dir) });
  t.deepEqual(pushed, { digest: first!.pushedDigest, mediaType: MediaType.DockerManifestList });

  t.like((await refresh([spec], options))[0], { status: 'up-to-date' });
  const v2 = await pushBases('v2');
  const [moved] = await refresh([spec], options);
  t.like(moved, { status: 'rebuilt', reason: `the base moved: ${v1.index.digest} → ${v2.index.digest}` });
  t.not(moved!.pushedDigest, first!.pushedDigest);
});
