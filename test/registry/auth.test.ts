// Registries that want credentials: htpasswd basic auth, and the bearer token flow (the real registry
// trusting a token service the test runs). Credentials come from --creds or the auth files; without
// them the error says how to log in; a wrong password is named by its user, and never printed.
import test from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { RegistryError } from '../../src/errors.js';
import { openRegistryImage, pushImage } from '../../src/transport/registry/index.js';
import { startRegistry, startTokenServer } from '../helpers/registry.js';
import { collect } from '../helpers/streams.js';
import { fileLayer, testImage } from './images.js';

const PASSWORD = 'pa55-w0rd:with:colons';

async function authFile(t: { teardown(fn: () => Promise<void>): void }, host: string, user: string, password: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'dockvm-authfile-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'auth.json');
  await writeFile(path, JSON.stringify({ auths: { [host]: { auth: Buffer.from(`${user}:${password}`).toString('base64') } } }));
  return path;
}

/** Everything an error exposes: message, stack, inspect output, JSON. */
function everything(err: unknown): string {
  return [String((err as Error).message), String((err as Error).stack), inspect(err, { depth: 5 }), JSON.stringify(err)].join('\n');
}

test('htpasswd basic auth: refused without credentials (saying how to log in), with a wrong password (naming the user only), works with --creds or an auth file', async (t) => {
  const registry = await startRegistry(t, { htpasswd: { username: 'alice', password: PASSWORD } });
  const image = testImage([await fileLayer('etc/basic', 'basic')]);
  const ref = `docker://${registry.host}/dockvm/basic:1`;

  const anonymous = await t.throwsAsync(pushImage(image, ref, { authFiles: [] }), { instanceOf: RegistryError });
  t.is(
    anonymous.message,
    `${registry.host}: authentication required for dockvm/basic: give --creds USER:PASS, or log in (podman login / docker login) so that $REGISTRY_AUTH_FILE or ~/.docker/config.json holds credentials for ${registry.host}`,
  );
  const wrong = await t.throwsAsync(pushImage(image, ref, { authFiles: [], creds: 'alice:not-the-password' }), { instanceOf: RegistryError });
  t.regex(wrong.message, /rejected the credentials of user "alice" \(from --creds\) for dockvm\/basic: check the user name and password$/);
  t.false(everything(wrong).includes('not-the-password'));

  const pushed = await pushImage(image, ref, { authFiles: [], creds: `alice:${PASSWORD}` });
  t.deepEqual(pushed.layers.map((layer) => layer.status), ['uploaded']);
  t.false(JSON.stringify(pushed).includes(PASSWORD));

  const file = await authFile(t, registry.host, 'alice', PASSWORD);
  const pulled = await openRegistryImage(ref, { authFiles: [file] });
  t.teardown(() => pulled.close());
  t.is(pulled.manifest.digest, pushed.digest);
  t.is((await collect(await pulled.layers[0]!.openBlob())).length, pushed.layers[0]!.size);
  const denied = await t.throwsAsync(openRegistryImage(ref, { authFiles: [] }), { instanceOf: RegistryError });
  t.regex(denied.message, /authentication required for dockvm\/basic/);
});

test('bearer tokens: anonymous pull where allowed, push with credentials, one token reused across requests', async (t) => {
  const tokens = await startTokenServer(t, { users: { bob: PASSWORD }, anonymousPull: (repository) => repository.startsWith('public/') });
  const registry = await startRegistry(t, { token: tokens });
  const layers = await Promise.all(['a', 'b', 'c'].map((name) => fileLayer(name, name.repeat(50_000))));
  const image = testImage(layers);

  const anonymous = await t.throwsAsync(pushImage(image, `docker://${registry.host}/public/app:1`, { authFiles: [] }), { instanceOf: RegistryError });
  t.regex(anonymous.message, /authentication required for public\/app: give --creds USER:PASS/);
  const wrong = await t.throwsAsync(pushImage(image, `docker://${registry.host}/public/app:1`, { authFiles: [], creds: 'bob:Wr0ng-Secret-42' }), {
    instanceOf: RegistryError,
  });
  t.regex(wrong.message, /the token service http:\/\/127\.0\.0\.1:\d+ rejected the credentials of user "bob" \(from --creds\)/);
  t.false(everything(wrong).includes('Wr0ng-Secret-42'));
  t.false(everything(wrong).includes(Buffer.from('bob:Wr0ng-Secret-42').toString('base64')));

  tokens.requests.length = 0;
  const pushed = await pushImage(image, `docker://${registry.host}/public/app:1`, { authFiles: [], creds: `bob:${PASSWORD}` });
  // One token for pull,push on the repository serves the HEADs, uploads and the manifest of all three layers.
  t.deepEqual(tokens.requests, [{ account: 'bob', scopes: ['repository:public/app:pull,push'] }]);

  tokens.requests.length = 0;
  const pulled = await openRegistryImage(`docker://${registry.host}/public/app:1`, { authFiles: [] });
  t.teardown(() => pulled.close());
  await pulled.fetchLayers();
  t.is(pulled.manifest.digest, pushed.digest);
  t.deepEqual(tokens.requests, [{ account: '', scopes: ['repository:public/app:pull'] }]);

  // Not public: anonymous gets a token without access, and the error says how to log in.
  await pushImage(image, `docker://${registry.host}/private/app:1`, { authFiles: [], creds: `bob:${PASSWORD}` });
  const hidden = await t.throwsAsync(openRegistryImage(`docker://${registry.host}/private/app:1`, { authFiles: [] }), { instanceOf: RegistryError });
  t.regex(hidden.message, /authentication required for private\/app: give --creds USER:PASS, or log in/);
  const file = await authFile(t, registry.host, 'bob', PASSWORD);
  const withFile = await openRegistryImage(`docker://${registry.host}/private/app:1`, { authFiles: [file] });
  t.teardown(() => withFile.close());
  t.deepEqual(withFile.rawConfig, image.rawConfig);
});

test('bearer tokens: a cross-repository mount asks for pull on the source too', async (t) => {
  const tokens = await startTokenServer(t, { users: { bob: PASSWORD } });
  const registry = await startRegistry(t, { token: tokens });
  const creds = `bob:${PASSWORD}`;
  await pushImage(testImage([await fileLayer('m', 'mount me')]), `docker://${registry.host}/team/base:1`, { authFiles: [], creds });
  const source = await openRegistryImage(`docker://${registry.host}/team/base:1`, { authFiles: [], creds });
  t.teardown(() => source.close());
  tokens.requests.length = 0;
  const pushed = await pushImage(source, `docker://${registry.host}/team/derived:1`, { authFiles: [], creds });
  t.deepEqual(pushed.layers.map((layer) => layer.status), ['mounted']);
  t.true(tokens.requests.some(({ scopes }) => scopes.includes('repository:team/base:pull') && scopes.includes('repository:team/derived:pull,push')));
});
