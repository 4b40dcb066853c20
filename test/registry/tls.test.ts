// A registry over HTTPS whose certificate a private CA signed: refused, saying what to do, until the CA
// is named in NODE_EXTRA_CA_CERTS; then push (node:https, streamed) and pull (fetch) both work.
import test from 'ava';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeDockerArchive } from '../fixtures/assemble.js';
import { runDockvm } from '../helpers/peers.js';
import { makeCertificates, startRegistry } from '../helpers/registry.js';
import { tempDir } from '../transport/archives.js';
import { fileLayer } from './images.js';

test('HTTPS with a private CA: an untrusted certificate is a one-line error naming NODE_EXTRA_CA_CERTS; with it, push and pull work', async (t) => {
  const dir = await tempDir(t);
  const { ca, certificate, key } = await makeCertificates(dir);
  const registry = await startRegistry(t, { tls: { certificate, key } });
  await writeDockerArchive(join(dir, 'app.tar'), [{ repoTag: 'app:1', layers: [await fileLayer('etc/app', 'app\n'.repeat(5000))] }]);
  const env = { REGISTRY_AUTH_FILE: join(dir, 'none.json'), DOCKER_CONFIG: join(dir, 'none') };
  const ref = `${registry.host}/dockvm/tls:1`;

  const untrusted = await runDockvm(['push', 'app.tar', ref], { cwd: dir, env });
  t.is(untrusted.exitCode, 1);
  t.regex(untrusted.stderr, new RegExp(`^dockvm: cannot reach registry ${registry.host} \\(GET /v2/\\): its TLS certificate is not trusted \\([A-Z_]+\\): if a private CA signed it, name the CA in NODE_EXTRA_CA_CERTS=/path/ca\\.pem\\n$`));

  const trusted = { ...env, NODE_EXTRA_CA_CERTS: ca };
  const pushed = await runDockvm(['push', 'app.tar', ref], { cwd: dir, env: trusted });
  t.is(pushed.exitCode, 0, pushed.stderr);
  const pulled = await runDockvm(['pull', ref, '-o', 'out.tar', '--json'], { cwd: dir, env: trusted });
  t.is(pulled.exitCode, 0, pulled.stderr);
  t.is(JSON.parse(pulled.stdout).digest, pushed.stdout.trim());
  t.true((await readFile(join(dir, 'out.tar'))).length > 20_000);
});
