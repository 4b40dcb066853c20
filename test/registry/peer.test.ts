// skopeo as the peer: what skopeo pushes, dockvm pulls digest for digest; what dockvm pushes, skopeo
// reads and copies (verifying every blob) with the same digests.
import test from 'ava';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { writeDockerArchive } from '../fixtures/assemble.js';
import { hasTool, peer, runDockvm } from '../helpers/peers.js';
import { needs } from '../helpers/prerequisites.js';
import { startRegistry } from '../helpers/registry.js';
import { tempDir } from '../transport/archives.js';
import { openImage } from '../../src/transport/index.js';
import { openRegistryImage } from '../../src/transport/registry/index.js';
import { fileLayer } from './images.js';

const sha = (data: Buffer | string) => `sha256:${createHash('sha256').update(data).digest('hex')}`;
const isolated = { authFiles: [] as string[] };
const withSkopeo = needs(hasTool('skopeo'), 'skopeo is not installed (scripts/setup installs it)');

async function archive(dir: string, repoTag: string): Promise<string> {
  const path = join(dir, 'app.tar');
  await writeDockerArchive(path, [{ repoTag, layers: [await fileLayer('etc/os', 'peer\n'), await fileLayer('usr/bin/app', 'x'.repeat(70_000))] }]);
  return path;
}

async function skopeoView(reference: string): Promise<{ digest: string; layers: string[]; rawManifest: string; config: string }> {
  const inspected = JSON.parse(await peer('skopeo', ['inspect', '--tls-verify=false', reference])) as { Digest: string; Layers: string[] };
  const rawManifest = await peer('skopeo', ['inspect', '--tls-verify=false', '--raw', reference]);
  const config = await peer('skopeo', ['inspect', '--tls-verify=false', '--config', '--raw', reference]);
  return { digest: inspected.Digest, layers: inspected.Layers, rawManifest, config };
}

withSkopeo('an image skopeo pushed: dockvm reads the same manifest, config and layer digests, and pulls the same image', async (t) => {
  const registry = await startRegistry(t);
  const dir = await tempDir(t);
  const source = await archive(dir, 'peer/app:1');
  const ref = `docker://${registry.host}/peer/from-skopeo:1`;
  await peer('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `docker-archive:${source}`, ref]);
  const view = await skopeoView(ref);

  const image = await openRegistryImage(ref, isolated);
  t.teardown(() => image.close());
  t.is<string, string>(image.manifest.digest, view.digest);
  t.is<string, string>(image.manifest.digest, sha(view.rawManifest));
  t.is<string, string>(image.configDigest, sha(view.config));
  t.deepEqual<string[], string[]>(await Promise.all(image.layers.map(async (layer) => (await layer.blob()).digest)), view.layers);
  const original = await openImage(source);
  t.teardown(() => original.close());
  t.deepEqual(image.layers.map((layer) => layer.diffId), original.layers.map((layer) => layer.diffId));

  const pulled = await runDockvm(['pull', ref, '-o', 'pulled.tar', '--json'], { cwd: dir, env: { REGISTRY_AUTH_FILE: join(dir, 'none.json') } });
  t.is(pulled.exitCode, 0, pulled.stderr);
  t.is(JSON.parse(pulled.stdout).digest, view.digest);
  // skopeo reads the pulled archive as the same image.
  t.is(sha(await peer('skopeo', ['inspect', '--config', '--raw', `docker-archive:${join(dir, 'pulled.tar')}`])), sha(view.config));
});

withSkopeo('an image dockvm pushed: skopeo sees the same digests, and copies it with every blob verified', async (t) => {
  const registry = await startRegistry(t);
  const dir = await tempDir(t);
  const source = await archive(dir, 'peer/app:1');
  const ref = `docker://${registry.host}/peer/from-dockvm:1`;
  const pushed = await runDockvm(['push', source, ref, '--json'], { cwd: dir, env: { REGISTRY_AUTH_FILE: join(dir, 'none.json') } });
  t.is(pushed.exitCode, 0, pushed.stderr);
  const result = JSON.parse(pushed.stdout) as { digest: string; config: { digest: string }; layers: { digest: string }[] };
  const view = await skopeoView(ref);
  t.is(view.digest, result.digest);
  t.is(sha(view.rawManifest), result.digest);
  t.is(sha(view.config), result.config.digest);
  t.deepEqual(view.layers, result.layers.map((layer) => layer.digest));
  // skopeo checks every blob against its digest while copying, and the diff_ids when writing the archive.
  await peer('skopeo', ['copy', '--quiet', '--src-tls-verify=false', ref, `oci:${join(dir, 'copy')}:1`]);
  await peer('skopeo', ['copy', '--quiet', '--src-tls-verify=false', ref, `docker-archive:${join(dir, 'copy.tar')}:peer/app:1`]);
  const copied = await openImage(join(dir, 'copy.tar'));
  t.teardown(() => copied.close());
  t.is<string, string>(copied.configDigest, result.config.digest);
});
