// Multi-platform images as an index: written into an OCI layout (skopeo reads it as one), pushed from
// that layout (`dockvm push`: every platform's manifest, then the index), read back by the index's
// digest for each platform (`dockvm pull --arch`), pushed from that registry to another repository whole,
// and read by skopeo, which copies the whole list back out.
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { MediaType } from '../../src/image/media-types.js';
import { sha256 } from '../../src/image/digest.js';
import { openImage, writeOciIndex } from '../../src/transport/index.js';
import { hasTool, peer, runDockvm } from '../helpers/peers.js';
import { needs } from '../helpers/prerequisites.js';
import { startRegistry } from '../helpers/registry.js';
import { tempDir } from '../transport/archives.js';
import { fileLayer, testImage } from './images.js';

const withSkopeo = needs(hasTool('skopeo') && hasTool('docker-registry'), 'skopeo or docker-registry is missing (scripts/setup installs them)');

/** Two platforms' images sharing their bottom layer, as a multi-platform build over one base gives. */
async function twoPlatforms() {
  const shared = await fileLayer('etc/base', 'base\n');
  const amd64 = testImage([shared, await fileLayer('arch', 'x86_64\n')], { architecture: 'amd64', marker: 'amd64' });
  const arm64 = testImage([shared, await fileLayer('arch', 'aarch64\n')], { architecture: 'arm64', variant: 'v8', marker: 'arm64' });
  return { amd64, arm64 };
}

function isolatedEnv(dir: string): Record<string, string> {
  return { REGISTRY_AUTH_FILE: join(dir, 'no-auth.json'), DOCKER_CONFIG: join(dir, 'no-docker-config') };
}

withSkopeo('an OCI layout holding an index: one manifest per platform, labelled with its config\'s; skopeo sees the index; each platform opens to its own image', async (t) => {
  const dir = await tempDir(t);
  const { amd64, arm64 } = await twoPlatforms();
  const layout = join(dir, 'layout');
  const written = await writeOciIndex([amd64, arm64], layout, { ref: '1' });

  const indexJson = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8'));
  t.deepEqual(indexJson.manifests, [{ ...written.index, annotations: { 'org.opencontainers.image.ref.name': '1' } }]);
  t.is(written.index.mediaType, MediaType.OciIndex);
  const raw = JSON.parse(await peer('skopeo', ['inspect', '--raw', `oci:${layout}:1`]));
  t.is(sha256(Buffer.from(await peer('skopeo', ['inspect', '--raw', `oci:${layout}:1`]))), written.index.digest);
  t.deepEqual(raw.manifests.map((m: { platform: unknown }) => m.platform), [
    { architecture: 'amd64', os: 'linux' },
    { architecture: 'arm64', os: 'linux', variant: 'v8' },
  ]);
  for (const [architecture, image] of [['amd64', amd64], ['arm64', arm64]] as const) {
    // skopeo's choice of the platform's manifest, and dockvm's own reading of the layout
    const config = JSON.parse(await peer('skopeo', ['inspect', '--config', '--override-arch', architecture, `oci:${layout}:1`]));
    t.is(config.config.Labels.marker, architecture);
    const opened = await openImage(`oci:${layout}:1`, { platform: { os: 'linux', architecture } });
    t.is(opened.configDigest, image.configDigest);
    t.deepEqual(opened.layers.map((l) => l.diffId), image.layers.map((l) => l.diffId));
    await opened.close();
  }
  // the layer both platforms share is one blob: 2 configs, 3 layers, 2 manifests and the index
  t.is((await readdir(join(layout, 'blobs', 'sha256'))).length, 8);
});

withSkopeo('dockvm push of an index layout: every manifest, then the index; pulled back by the index digest, each platform is its image; copied registry to registry whole; skopeo copy --all keeps both', async (t) => {
  const dir = await tempDir(t);
  const registry = await startRegistry(t);
  const { amd64, arm64 } = await twoPlatforms();
  const layout = join(dir, 'layout');
  await writeOciIndex([amd64, arm64], layout, { ref: '1' });
  const env = isolatedEnv(dir);
  const target = `${registry.host}/dockvm/multi:1`;

  const push = await runDockvm(['push', `oci:${layout}:1`, `docker://${target}`, '--json'], { env });
  t.is(push.exitCode, 0, push.stderr);
  const result = JSON.parse(push.stdout);
  t.is(result.mediaType, MediaType.DockerManifestList);
  t.deepEqual(result.manifests.map((m: { platform: unknown }) => m.platform), [
    { architecture: 'amd64', os: 'linux' },
    { architecture: 'arm64', os: 'linux', variant: 'v8' },
  ]);
  const raw = await peer('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${target}`]);
  t.is(sha256(Buffer.from(raw)), result.digest, 'the tag names the index dockvm reported');
  t.deepEqual(JSON.parse(raw).manifests.map((m: { digest: string }) => m.digest), result.manifests.map((m: { digest: string }) => m.digest));

  for (const [arch, image] of [['amd64', amd64], ['arm64', arm64]] as const) {
    const out = join(dir, `${arch}.tar`);
    const pull = await runDockvm(['pull', `${registry.host}/dockvm/multi@${result.digest}`, '--arch', arch, '-o', out, '--json'], { env });
    t.is(pull.exitCode, 0, pull.stderr);
    t.like(JSON.parse(pull.stdout), { digest: result.digest, architecture: arch, configDigest: image.configDigest });
    const pulled = await openImage(out);
    t.deepEqual(pulled.layers.map((l) => l.diffId), image.layers.map((l) => l.diffId));
    await pulled.close();
  }

  // registry to registry: the whole index, each manifest as it was (so the index too)
  const copy = await runDockvm(['push', `docker://${target}`, `docker://${registry.host}/dockvm/copy:1`, '--json'], { env });
  t.is(copy.exitCode, 0, copy.stderr);
  const copied = JSON.parse(copy.stdout);
  t.is(copied.digest, result.digest);
  t.deepEqual(copied.manifests.map((m: { digest: string }) => m.digest), result.manifests.map((m: { digest: string }) => m.digest));

  // a peer copies the whole list back out (into OCI manifests): both platforms there, each its own config
  const back = `oci:${join(dir, 'back')}:1`;
  await peer('skopeo', ['copy', '--all', '--src-tls-verify=false', `docker://${target}`, back]);
  t.deepEqual(JSON.parse(await peer('skopeo', ['inspect', '--raw', back])).manifests.map((m: { platform: unknown }) => m.platform), result.manifests.map((m: { platform: unknown }) => m.platform));
  for (const arch of ['amd64', 'arm64']) {
    t.is(JSON.parse(await peer('skopeo', ['inspect', '--config', '--override-arch', arch, back])).config.Labels.marker, arch);
  }
});
