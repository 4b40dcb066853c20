// The parts of the registry client that need no registry: credentials and where they come from,
// WWW-Authenticate parsing, platform choice, loopback detection, deterministic parallel gzip.
import test from 'ava';
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { gunzipSync } from 'node:zlib';
import { Readable } from 'node:stream';
import { parseChallenges } from '../../src/transport/registry/challenge.js';
import { authFiles, findCredentials, parseCreds } from '../../src/transport/registry/credentials.js';
import { isLoopback, schemesFor } from '../../src/transport/registry/endpoint.js';
import { ParallelGzip } from '../../src/transport/registry/parallel-gzip.js';
import { layerGzip } from '../../src/transport/registry/layer-gzip.js';
import { choosePlatform, wantedPlatform } from '../../src/transport/registry/platform.js';
import { RegistryError, UsageError } from '../../src/errors.js';
import { collect, oddChunks } from '../helpers/streams.js';

test('--creds USER:PASS: the password may hold ":", and never shows in JSON, inspect or String()', (t) => {
  const creds = parseCreds('alice:s3cret:with:colons');
  t.is(creds.username, 'alice');
  t.is(creds.basicAuthorization(), `Basic ${Buffer.from('alice:s3cret:with:colons').toString('base64')}`);
  for (const shown of [JSON.stringify(creds), inspect(creds), String(creds), JSON.stringify({ nested: creds })]) {
    t.false(shown.includes('s3cret'), shown);
    t.true(shown.includes('alice'), shown);
  }
  t.throws(() => parseCreds('alice'), { instanceOf: UsageError, message: /--creds must be USER:PASS/ });
  t.throws(() => parseCreds(':pw'), { instanceOf: UsageError });
});

test('auth files: $REGISTRY_AUTH_FILE first, else the containers auth.json files, then Docker config.json', (t) => {
  t.deepEqual(authFiles({ REGISTRY_AUTH_FILE: '/a/auth.json', DOCKER_CONFIG: '/d' }, '/home/u'), ['/a/auth.json', '/d/config.json']);
  t.deepEqual(authFiles({ XDG_RUNTIME_DIR: '/run/user/1' }, '/home/u'), [
    '/run/user/1/containers/auth.json',
    '/home/u/.config/containers/auth.json',
    '/home/u/.docker/config.json',
  ]);
});

test('credentials are found by host, by namespace (longest first), and under the Docker Hub aliases', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'dockvm-auth-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const b64 = (text: string) => Buffer.from(text).toString('base64');
  const podman = join(dir, 'auth.json');
  await writeFile(
    podman,
    JSON.stringify({
      auths: {
        'reg.example:5000': { auth: b64('hostuser:hostpw') },
        'reg.example:5000/team/app': { auth: b64('appuser:apppw') },
      },
    }),
  );
  await mkdir(join(dir, 'docker'));
  const docker = join(dir, 'docker', 'config.json');
  await writeFile(docker, JSON.stringify({ auths: { 'https://index.docker.io/v1/': { auth: b64('hubuser:hubpw') }, 'http://other.example': { username: 'u2', password: 'p2' } } }));
  const files = [podman, docker];
  t.is((await findCredentials('reg.example:5000', 'team/app', { files }))?.username, 'appuser');
  t.is((await findCredentials('reg.example:5000', 'team/other', { files }))?.username, 'hostuser');
  const hub = await findCredentials('registry-1.docker.io', 'library/alpine', { files });
  t.is(hub?.username, 'hubuser');
  t.is(hub?.source, docker);
  t.is((await findCredentials('other.example', 'x', { files }))?.username, 'u2');
  t.is(await findCredentials('nowhere.example', 'x', { files }), undefined);
  // A file that is not JSON is skipped, not echoed.
  await writeFile(podman, 'not json: secret');
  t.is((await findCredentials('reg.example:5000', 'team/app', { files })), undefined);
});

test('WWW-Authenticate: Bearer with quoted params, Basic, and a list', (t) => {
  t.deepEqual(parseChallenges('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push"'), [
    { scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/alpine:pull,push' } },
  ]);
  t.deepEqual(parseChallenges('Basic realm="basic-realm"'), [{ scheme: 'basic', params: { realm: 'basic-realm' } }]);
  t.deepEqual(parseChallenges('Basic realm="a", Bearer realm="https://t/x",error="insufficient_scope"'), [
    { scheme: 'basic', params: { realm: 'a' } },
    { scheme: 'bearer', params: { realm: 'https://t/x', error: 'insufficient_scope' } },
  ]);
  t.deepEqual(parseChallenges('Bearer realm="with \\"quote\\""'), [{ scheme: 'bearer', params: { realm: 'with "quote"' } }]);
  t.deepEqual(parseChallenges(null), []);
});

test('loopback registries may use HTTP; others only with --tls-verify=false', (t) => {
  for (const host of ['127.0.0.1:5000', '127.1.2.3', 'localhost:5000', '[::1]:5000']) t.true(isLoopback(host), host);
  for (const host of ['10.0.0.1:5000', 'registry.example', 'localhost.example:5000', '[::2]:5000']) t.false(isLoopback(host), host);
  t.deepEqual(schemesFor('127.0.0.1:5000', true), ['https', 'http']);
  t.deepEqual(schemesFor('registry.example', true), ['https']);
  t.deepEqual(schemesFor('registry.example', false), ['https', 'http']);
});

test('platform choice: os/arch/variant, arch aliases, default variants, attestations never chosen', (t) => {
  const entries = [
    { digest: 'att', platform: { os: 'unknown', architecture: 'unknown' } },
    { digest: 'amd64', platform: { os: 'linux', architecture: 'amd64' } },
    { digest: 'armv6', platform: { os: 'linux', architecture: 'arm', variant: 'v6' } },
    { digest: 'armv7', platform: { os: 'linux', architecture: 'arm', variant: 'v7' } },
    { digest: 'arm64', platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
    { digest: 'win', platform: { os: 'windows', architecture: 'amd64' } },
  ];
  t.is(choosePlatform(entries, wantedPlatform({ architecture: 'amd64' }))?.digest, 'amd64');
  t.is(choosePlatform(entries, wantedPlatform({ architecture: 'x86_64' }))?.digest, 'amd64');
  t.is(choosePlatform(entries, wantedPlatform({ architecture: 'arm' }))?.digest, 'armv7');
  t.is(choosePlatform(entries, wantedPlatform({ architecture: 'arm', variant: 'v6' }))?.digest, 'armv6');
  t.is(choosePlatform(entries, wantedPlatform({ architecture: 'aarch64' }))?.digest, 'arm64');
  t.is(choosePlatform([{ digest: 'bare', platform: { os: 'linux', architecture: 'arm64' } }], wantedPlatform({ architecture: 'arm64', variant: 'v8' }))?.digest, 'bare');
  t.is(choosePlatform(entries, wantedPlatform({ os: 'windows', architecture: 'amd64' }))?.digest, 'win');
  t.is(choosePlatform(entries, wantedPlatform({ architecture: 's390x' })), undefined);
  t.is(choosePlatform(entries, wantedPlatform({ architecture: 'arm', variant: 'v5' })), undefined);
});

async function pgzip(input: Readable, options: ConstructorParameters<typeof ParallelGzip>[0] = {}): Promise<Buffer> {
  return collect(input.pipe(new ParallelGzip(options)));
}

test('parallel gzip: gunzips to the input, the same bytes however the input is chunked, at block edges too', async (t) => {
  const text = Buffer.from(Array.from({ length: 3000 }, (_, i) => `line ${i} ${'abc'.repeat(i % 17)}\n`).join(''));
  const random = Buffer.concat([text, Buffer.from(Array.from({ length: 70_000 }, (_, i) => (i * 2654435761) >>> 24))]);
  const blockSize = 4096;
  for (const data of [Buffer.alloc(0), Buffer.alloc(blockSize, 7), Buffer.alloc(blockSize * 3 + 1, 9), text, random]) {
    const whole = await pgzip(Readable.from([data]), { blockSize });
    t.deepEqual(gunzipSync(whole), data, `${data.length} bytes`);
    t.deepEqual(whole.subarray(0, 10), Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]));
    const odd = await pgzip(oddChunks(data), { blockSize, concurrency: 3 });
    t.deepEqual(odd, whole, `${data.length} bytes in odd chunks`);
  }
  // Back-references across blocks: repetitive data compresses as well as a single stream would, nearly.
  const repetitive = Buffer.alloc(1 << 20, 'dockvm ');
  t.true((await pgzip(Readable.from([repetitive]), { blockSize: 64 * 1024 })).length < 20_000);
});

test('parallel gzip: a failing input fails the output', async (t) => {
  const failing = new Readable({
    read() {
      this.destroy(new Error('source broke'));
    },
  });
  const gzip = new ParallelGzip();
  failing.on('error', (err) => gzip.destroy(err));
  await t.throwsAsync(collect(failing.pipe(gzip)), { message: 'source broke' });
});

test('layer gzip for pushes: igzip (isal, which setup installs) when present; gzip with no name or mtime, the same bytes however the input is chunked', async (t) => {
  const gzip = await layerGzip();
  t.regex(gzip.id, /^igzip\d+\.\d+\.\d+-l1$/, 'scripts/setup installs isal, so pushes use igzip');
  const text = Buffer.from(Array.from({ length: 20_000 }, (_, i) => `line ${i} ${'abc'.repeat(i % 17)}\n`).join(''));
  for (const data of [Buffer.alloc(0), text]) {
    const whole = await collect(Readable.from([data]).pipe(gzip.create()));
    t.deepEqual(gunzipSync(whole), data, `${data.length} bytes`);
    t.deepEqual(whole.subarray(0, 4), Buffer.from([0x1f, 0x8b, 8, 0]), 'no FNAME, FEXTRA or FCOMMENT');
    t.deepEqual(whole.subarray(4, 8), Buffer.alloc(4), 'mtime 0');
    t.deepEqual(await collect(oddChunks(data).pipe(gzip.create())), whole, `${data.length} bytes in odd chunks`);
  }
  t.true((await collect(Readable.from([text]).pipe(gzip.create()))).length < text.length / 4);
});

test('credential helpers: credHelpers for a registry, else credsStore, else auths; missing, failing and token-only helpers are errors naming them', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'dockvm-helper-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  // A helper speaking Docker's protocol: the server on stdin, JSON on stdout; "not found" with exit 1.
  const helper = join(dir, 'docker-credential-fake');
  await writeFile(
    helper,
    [
      '#!/bin/sh',
      'read server',
      'case "$server" in',
      `  reg.example:5000) echo '{"ServerURL":"reg.example:5000","Username":"helperuser","Secret":"helper-secret-1"}' ;;`,
      `  https://index.docker.io/v1/) echo '{"Username":"hubhelper","Secret":"hub-secret-2"}' ;;`,
      `  token.example) echo '{"Username":"<token>","Secret":"identity-token-3"}' ;;`,
      '  broken.example) echo "cannot reach the keyring" >&2; exit 3 ;;',
      '  *) echo "credentials not found in native keychain"; exit 1 ;;',
      'esac',
      '',
    ].join('\n'),
    { mode: 0o755 },
  );
  const path = process.env.PATH;
  process.env.PATH = `${dir}:${path}`;
  t.teardown(() => {
    process.env.PATH = path;
  });
  const b64 = (text: string) => Buffer.from(text).toString('base64');
  const config = join(dir, 'config.json');
  await writeFile(
    config,
    JSON.stringify({
      auths: { 'reg.example:5000': {}, 'fallback.example': { auth: b64('fileuser:file-secret') }, 'own.example': { auth: b64('stale:stale') } },
      credsStore: 'fake',
      credHelpers: { 'own.example': 'fake' },
    }),
  );
  const files = [config];
  const fromStore = await findCredentials('reg.example:5000', 'team/app', { files });
  t.is(fromStore?.username, 'helperuser');
  t.is(fromStore?.source, `docker-credential-fake (${config})`);
  t.is(fromStore?.basicAuthorization(), `Basic ${b64('helperuser:helper-secret-1')}`);
  t.false(JSON.stringify(fromStore).includes('helper-secret-1'));
  t.is((await findCredentials('registry-1.docker.io', 'library/alpine', { files }))?.username, 'hubhelper');
  // The store has nothing for it: the auths entry serves.
  t.is((await findCredentials('fallback.example', 'x', { files }))?.username, 'fileuser');
  // credHelpers names the helper for this registry; it has nothing, and the stale auths entry is not used.
  t.is(await findCredentials('own.example', 'x', { files }), undefined);

  const token = await t.throwsAsync(findCredentials('token.example', 'x', { files }), { instanceOf: RegistryError });
  t.regex(token.message, /docker-credential-fake holds an identity token for token\.example/);
  t.false(token.message.includes('identity-token-3'));
  const broken = await t.throwsAsync(findCredentials('broken.example', 'x', { files }), { instanceOf: RegistryError });
  t.regex(broken.message, /^docker-credential-fake failed \(exit 3\) when asked for broken\.example's credentials; its stderr ends with:\ncannot reach the keyring$/);

  await writeFile(config, JSON.stringify({ auths: {}, credsStore: 'nonexistent' }));
  const missing = await t.throwsAsync(findCredentials('reg.example:5000', 'x', { files }), { instanceOf: RegistryError });
  t.is(missing.message, `${config} names the credential helper "nonexistent" (credsStore), but docker-credential-nonexistent is not on PATH: install it, or give --creds USER:PASS`);
});
