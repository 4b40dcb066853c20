// `dockvm push` and `dockvm pull` as a user runs them, against docker-registry on loopback.
import test from 'ava';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { writeDockerArchive } from '../fixtures/assemble.js';
import { runDockvm } from '../helpers/peers.js';
import { waitFor } from '../helpers/wait.js';
import { freePort, startFaultProxy, startRegistry } from '../helpers/registry.js';
import { fileLayer } from './images.js';
import { tempDir } from '../transport/archives.js';
import { openImage } from '../../src/transport/index.js';

const CLI = fileURLToPath(new URL('../../bin/dockvm.js', import.meta.url));
const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** No auth file of this machine's user may leak into a test. */
function isolatedEnv(dir: string): Record<string, string> {
  return { REGISTRY_AUTH_FILE: join(dir, 'no-auth.json'), DOCKER_CONFIG: join(dir, 'no-docker-config') };
}

async function sampleArchive(dir: string): Promise<string> {
  const path = join(dir, 'app.tar');
  await writeDockerArchive(path, [{ repoTag: 'app:1', layers: [await fileLayer('etc/base', 'base\n'), await fileLayer('app/run', 'run\n'.repeat(1000))] }]);
  return path;
}

test('push prints the digest; pull by tag writes the archive and says what to pin; pinned pulls are byte-identical', async (t) => {
  const registry = await startRegistry(t);
  const dir = await tempDir(t);
  const env = isolatedEnv(dir);
  await sampleArchive(dir);
  const name = `${registry.host}/dockvm/cli`;

  const pushed = await runDockvm(['push', 'app.tar', `docker://${name}:1`], { cwd: dir, env });
  t.is(pushed.exitCode, 0, pushed.stderr);
  t.regex(pushed.stdout, /^sha256:[0-9a-f]{64}\n$/);
  const digest = pushed.stdout.trim();
  t.is(pushed.stderr, `pushed app.tar to docker://${name}:1 (2 layer(s) uploaded)\n`);

  const pulled = await runDockvm(['pull', `${name}:1`, '-o', 'out.tar', '--json'], { cwd: dir, env });
  t.is(pulled.exitCode, 0, pulled.stderr);
  const result = JSON.parse(pulled.stdout);
  const archive = await readFile(join(dir, 'out.tar'));
  t.like(result, { reference: `docker://${name}:1`, digest, os: 'linux', architecture: 'amd64', output: 'out.tar', finalName: name, finalTag: '1', sha256: sha(archive) });
  t.is(result.layers.length, 2);
  const image = await openImage(join(dir, 'out.tar'));
  t.teardown(() => image.close());
  t.deepEqual(image.repoTags, [`${name}:1`]);
  t.is(result.configDigest, image.configDigest);

  const human = await runDockvm(['pull', `docker://${name}:1`, '-o', 'human.tar'], { cwd: dir, env });
  t.is(human.exitCode, 0, human.stderr);
  t.is(human.stdout, '');
  t.true(human.stderr.includes(`digest: ${digest}\nsha256: ${sha(archive)}\n`), human.stderr);
  t.true(
    human.stderr.includes(`to pin it: dockvm pull ${name}@${digest} --final-name ${name} --final-tag 1 --arch amd64 --sha256 ${sha(archive)} -o human.tar`),
    human.stderr,
  );
  t.deepEqual(await readFile(join(dir, 'human.tar')), archive);

  // The pin: by digest, same final name and tag, --sha256 of the archive: the same bytes.
  const pinned = await runDockvm(['pull', `${name}@${digest}`, '--final-name', name, '--final-tag', '1', '--sha256', sha(archive), '-o', 'pinned.tar'], { cwd: dir, env });
  t.is(pinned.exitCode, 0, pinned.stderr);
  t.deepEqual(await readFile(join(dir, 'pinned.tar')), archive);
  t.false(pinned.stderr.includes('to pin it'));

  // By digest without a final tag: "latest"; gzip when OUT ends .gz, reproducibly.
  const gz = await runDockvm(['pull', `${name}@${digest}`, '-o', 'latest.tar.gz', '--json'], { cwd: dir, env });
  t.is(gz.exitCode, 0, gz.stderr);
  t.like(JSON.parse(gz.stdout), { finalTag: 'latest', sha256: sha(await readFile(join(dir, 'latest.tar.gz'))) });
  const again = await runDockvm(['pull', `${name}@${digest}`, '-o', 'again.tar.gz'], { cwd: dir, env });
  t.deepEqual(await readFile(join(dir, 'again.tar.gz')), await readFile(join(dir, 'latest.tar.gz')));
  t.is(gunzipSync(await readFile(join(dir, 'again.tar.gz'))).length > 0, true);
  t.is(again.exitCode, 0);

  // An OCI layout.
  const oci = await runDockvm(['pull', `${name}:1`, '-o', 'oci:layout'], { cwd: dir, env });
  t.is(oci.exitCode, 0, oci.stderr);
  const fromLayout = await openImage(`oci:${join(dir, 'layout')}`);
  t.teardown(() => fromLayout.close());
  t.is(fromLayout.configDigest, image.configDigest);
});

test('pull --sha256 that does not match: exit 1, one line, no output file left', async (t) => {
  const registry = await startRegistry(t);
  const dir = await tempDir(t);
  const env = isolatedEnv(dir);
  await sampleArchive(dir);
  const pushed = await runDockvm(['push', 'app.tar', `${registry.host}/dockvm/pin:1`], { cwd: dir, env });
  t.is(pushed.exitCode, 0, pushed.stderr);
  const before = await readdir(dir);
  const wrong = 'ab'.repeat(32);
  const run = await runDockvm(['pull', `${registry.host}/dockvm/pin:1`, '--sha256', wrong, '-o', 'out.tar'], { cwd: dir, env });
  t.is(run.exitCode, 1);
  t.regex(run.stderr, new RegExp(`^dockvm: out\\.tar: the archive's sha256 is [0-9a-f]{64}, not the ${wrong} that --sha256 expects \\(nothing was written\\)\\n$`));
  t.deepEqual(await readdir(dir), before);
  const usage = await runDockvm(['pull', `${registry.host}/dockvm/pin:1`, '--sha256', wrong, '-o', 'oci:x'], { cwd: dir, env });
  t.is(usage.exitCode, 2);
  t.regex(usage.stderr, /--sha256 checks an archive file/);
});

test('pull errors are one line, with no output: unknown tag, other architecture only, registry down', async (t) => {
  const registry = await startRegistry(t);
  const dir = await tempDir(t);
  const env = isolatedEnv(dir);
  await sampleArchive(dir);
  t.is((await runDockvm(['push', 'app.tar', `${registry.host}/dockvm/err:1`], { cwd: dir, env })).exitCode, 0);
  const before = await readdir(dir);
  const cases: [string[], RegExp][] = [
    [[`${registry.host}/dockvm/err:2`], /^dockvm: 127\.0\.0\.1:\d+\/dockvm\/err:2: no such tag in 127\.0\.0\.1:\d+\/dockvm\/err \(404\): check the tag\n$/],
    [[`${registry.host}/dockvm/err:1`, '--arch', 'arm64'], /^dockvm: 127\.0\.0\.1:\d+\/dockvm\/err:1 is an image for linux\/amd64, not linux\/arm64: choose another tag, or drop --os\/--arch\/--variant\n$/],
    [[`127.0.0.1:${await freePort()}/dockvm/err:1`], /^dockvm: cannot reach registry 127\.0\.0\.1:\d+ \(GET \/v2\/\): connection refused: is the registry running, and is the host:port right\?\n$/],
  ];
  for (const [args, says] of cases) {
    const run = await runDockvm(['pull', ...args, '-o', 'out.tar'], { cwd: dir, env });
    t.is(run.exitCode, 1, args.join(' '));
    t.regex(run.stderr, says);
    t.deepEqual(await readdir(dir), before);
  }
});

test('a registry behind basic auth: without credentials the error says how to log in; --creds and auth files work; the password never shows', async (t) => {
  const password = 'Sup3r-Secret-Pw';
  const registry = await startRegistry(t, { htpasswd: { username: 'carol', password } });
  const dir = await tempDir(t);
  const env = isolatedEnv(dir);
  await sampleArchive(dir);
  const ref = `${registry.host}/dockvm/auth:1`;

  const anonymous = await runDockvm(['push', 'app.tar', ref], { cwd: dir, env });
  t.is(anonymous.exitCode, 1);
  t.is(anonymous.stderr, `dockvm: ${registry.host}: authentication required for dockvm/auth: give --creds USER:PASS, or log in (podman login / docker login) so that $REGISTRY_AUTH_FILE or ~/.docker/config.json holds credentials for ${registry.host}\n`);

  const wrong = await runDockvm(['push', 'app.tar', ref, '--creds', 'carol:Not-The-Pw-123', '--json'], { cwd: dir, env });
  t.is(wrong.exitCode, 1);
  t.false(wrong.stderr.includes('Not-The-Pw-123') || wrong.stdout.includes('Not-The-Pw-123'));
  t.regex(wrong.stderr, /rejected the credentials of user "carol" \(from --creds\)/);

  const pushed = await runDockvm(['push', 'app.tar', ref, '--creds', `carol:${password}`, '--json'], { cwd: dir, env });
  t.is(pushed.exitCode, 0, pushed.stderr);
  t.false(pushed.stdout.includes(password) || pushed.stderr.includes(password));
  t.like(JSON.parse(pushed.stdout), { reference: `docker://${ref}`, tag: '1' });

  const denied = await runDockvm(['pull', ref, '-o', 'out.tar'], { cwd: dir, env });
  t.is(denied.exitCode, 1);
  t.regex(denied.stderr, /authentication required for dockvm\/auth: give --creds USER:PASS/);
  const authFile = join(dir, 'auth.json');
  await import('node:fs/promises').then(({ writeFile }) =>
    writeFile(authFile, JSON.stringify({ auths: { [registry.host]: { auth: Buffer.from(`carol:${password}`).toString('base64') } } })),
  );
  const pulled = await runDockvm(['pull', ref, '-o', 'out.tar', '--json'], { cwd: dir, env: { ...env, REGISTRY_AUTH_FILE: authFile } });
  t.is(pulled.exitCode, 0, pulled.stderr);
  t.false(pulled.stdout.includes(password) || pulled.stderr.includes(password));

  // docker login with a credential store: config.json names the helper and holds no password.
  const { mkdir, writeFile } = await import('node:fs/promises');
  await mkdir(join(dir, 'bin'));
  await writeFile(join(dir, 'bin', 'docker-credential-dockvmtest'), `#!/bin/sh\nread server\n[ "$server" = "${registry.host}" ] || { echo "credentials not found in native keychain"; exit 1; }\necho '{"Username":"carol","Secret":"${password}"}'\n`, { mode: 0o755 });
  await mkdir(join(dir, 'docker'));
  await writeFile(join(dir, 'docker', 'config.json'), JSON.stringify({ auths: { [registry.host]: {} }, credsStore: 'dockvmtest' }));
  const helped = await runDockvm(['pull', ref, '-o', 'helped.tar', '--json'], {
    cwd: dir,
    env: { ...env, DOCKER_CONFIG: join(dir, 'docker'), PATH: `${join(dir, 'bin')}:${process.env.PATH}` },
  });
  t.is(helped.exitCode, 0, helped.stderr);
  t.false(helped.stdout.includes(password) || helped.stderr.includes(password));
  t.deepEqual(await readFile(join(dir, 'helped.tar')), await readFile(join(dir, 'out.tar')));
});

test('DOCKVM_PUSH_GZIP=zlib: the same image, its layers gzipped by zlib instead of igzip; both gunzip to the layers', async (t) => {
  const registry = await startRegistry(t);
  const dir = await tempDir(t);
  const env = isolatedEnv(dir);
  await sampleArchive(dir);
  const manifestOf = async (repository: string) => {
    const response = await fetch(`http://${registry.host}/v2/${repository}/manifests/1`, { headers: { accept: 'application/vnd.docker.distribution.manifest.v2+json' } });
    return (await response.json()) as { config: { digest: string }; layers: { digest: string }[] };
  };
  const layerTars = async (repository: string, manifest: { layers: { digest: string }[] }) =>
    Promise.all(manifest.layers.map(async ({ digest }) => sha(gunzipSync(Buffer.from(await (await fetch(`http://${registry.host}/v2/${repository}/blobs/${digest}`)).arrayBuffer())))));

  const byIgzip = await runDockvm(['push', 'app.tar', `${registry.host}/dockvm/igzip:1`], { cwd: dir, env });
  t.is(byIgzip.exitCode, 0, byIgzip.stderr);
  const byZlib = await runDockvm(['push', 'app.tar', `${registry.host}/dockvm/zlib:1`], { cwd: dir, env: { ...env, DOCKVM_PUSH_GZIP: 'zlib' } });
  t.is(byZlib.exitCode, 0, byZlib.stderr);
  const [igzip, zlib] = [await manifestOf('dockvm/igzip'), await manifestOf('dockvm/zlib')];
  t.is(igzip.config.digest, zlib.config.digest);
  t.notDeepEqual(igzip.layers.map((layer) => layer.digest), zlib.layers.map((layer) => layer.digest));
  const image = await openImage(join(dir, 'app.tar'));
  t.teardown(() => image.close());
  const diffIds = image.layers.map((layer) => layer.diffId.slice('sha256:'.length));
  t.deepEqual(await layerTars('dockvm/igzip', igzip), diffIds);
  t.deepEqual(await layerTars('dockvm/zlib', zlib), diffIds);
});

test('Ctrl-C during a pull: exit 130, and neither the archive being written nor a spool is left', async (t) => {
  const registry = await startRegistry(t);
  const dir = await tempDir(t);
  const env = isolatedEnv(dir);
  const { randomBytes } = await import('node:crypto');
  const { mkdir } = await import('node:fs/promises');
  await writeDockerArchive(join(dir, 'big.tar'), [{ repoTag: 'big:1', layers: [await fileLayer('noise', randomBytes(8 * 1024 * 1024)), await fileLayer('app', 'app\n')] }]);
  const pushed = await runDockvm(['push', 'big.tar', `${registry.host}/dockvm/big:1`], { cwd: dir, env });
  t.is(pushed.exitCode, 0, pushed.stderr);
  // A link that stalls 1 MiB into the big layer: the pull is still writing when the signal comes, however
  // long it took to get there.
  const proxy = await startFaultProxy(t, registry.host, { stallBlobAfter: 1024 * 1024 });
  await mkdir(join(dir, 'out'));
  await mkdir(join(dir, 'tmp'));
  const child = execa('node', [CLI, 'pull', `${proxy.host}/dockvm/big:1`, '-o', join(dir, 'out', 'big.tar')], { env: { ...env, TMPDIR: join(dir, 'tmp') }, reject: false });
  // Wait until the archive is being written beside its place, then interrupt.
  t.true(await waitFor(async () => (await readdir(join(dir, 'out'))).length > 0), 'the archive was begun');
  t.regex((await readdir(join(dir, 'out'))).join(' '), /^\.big\.tar\.[0-9a-f]+\.tmp$/);
  child.kill('SIGINT');
  const result = await child;
  t.is(result.exitCode, 130, String(result.stderr));
  t.regex(String(result.stderr), /dockvm: interrupted; cleaned up/);
  t.deepEqual(await readdir(join(dir, 'out')), []);
  t.deepEqual(await readdir(join(dir, 'tmp')), []);
});
