// Pushing and pulling against a real registry (Debian's docker-registry on loopback, no auth): what
// arrives is what was sent, digest for digest; pushes are reproducible; blobs are skipped or mounted;
// an index is resolved to the platform asked for.
import test from 'ava';
import { collect } from '../helpers/streams.js';
import { freePort, startRegistry } from '../helpers/registry.js';
import { openRegistryImage, pushImage, resolveDigest } from '../../src/transport/registry/index.js';
import { MediaType } from '../../src/image/media-types.js';
import { sha256 } from '../../src/image/digest.js';
import { RegistryError } from '../../src/errors.js';
import { fileLayer, putIndex, testImage } from './images.js';

const isolated = { authFiles: [] as string[] };

test('push then open: the same config bytes, diff_ids and layer contents; gzip layers; a Docker v2 schema 2 manifest', async (t) => {
  const registry = await startRegistry(t);
  const layers = [await fileLayer('etc/hello', 'hello\n'), await fileLayer('app/run', 'run\n'.repeat(5000))];
  const image = testImage(layers);
  const ref = `docker://${registry.host}/dockvm/app:1`;
  const pushed = await pushImage(image, ref, isolated);
  t.is(pushed.reference, ref);
  t.is(pushed.mediaType, MediaType.DockerManifest);
  t.deepEqual(pushed.layers.map((layer) => [layer.status, layer.mediaType]), [
    ['uploaded', MediaType.DockerLayerGzip],
    ['uploaded', MediaType.DockerLayerGzip],
  ]);
  t.deepEqual(pushed.config, { mediaType: MediaType.DockerConfig, digest: image.configDigest, size: image.rawConfig.length, status: 'uploaded' });

  const pulled = await openRegistryImage(ref, isolated);
  t.teardown(() => pulled.close());
  t.is(pulled.manifest.digest, pushed.digest);
  t.is(pulled.referenceDigest, pushed.digest);
  t.deepEqual(pulled.rawConfig, image.rawConfig);
  t.is(pulled.configDigest, image.configDigest);
  t.deepEqual(pulled.repoTags, [`${registry.host}/dockvm/app:1`]);
  t.deepEqual(pulled.layers.map((layer) => layer.diffId), image.layers.map((layer) => layer.diffId));
  for (const [i, layer] of pulled.layers.entries()) {
    t.deepEqual(await collect(await layer.openTar()), layers[i]);
    // Re-openable: a second open reads the spool again, verified.
    const blob = await collect(await layer.openBlob());
    t.is(sha256(blob), pushed.layers[i]!.digest);
    t.is(blob.length, pushed.layers[i]!.size);
    const local = await layer.localTar?.();
    t.is(local?.size, layers[i]!.length);
  }
  t.deepEqual(await resolveDigest(ref, isolated), { digest: pushed.digest, mediaType: MediaType.DockerManifest });
});

test('pushes are reproducible; a registry image pushed again skips its blobs, and is mounted across repositories', async (t) => {
  const registry = await startRegistry(t);
  const image = testImage([await fileLayer('a', 'a'.repeat(100_000)), await fileLayer('b', 'b')]);
  const first = await pushImage(image, `docker://${registry.host}/dockvm/src:1`, isolated);
  const second = await pushImage(image, `docker://${registry.host}/dockvm/src:2`, isolated);
  t.is(second.digest, first.digest);
  t.deepEqual(second.layers.map((layer) => layer.digest), first.layers.map((layer) => layer.digest));
  t.is(second.config.status, 'exists');
  // What each layer gzipped to was remembered: the second push only asked the registry whether it had them.
  t.deepEqual(second.layers.map((layer) => layer.status), ['exists', 'exists']);

  const source = await openRegistryImage(`docker://${registry.host}/dockvm/src:1`, isolated);
  t.teardown(() => source.close());
  const same = await pushImage(source, `docker://${registry.host}/dockvm/src:3`, isolated);
  t.deepEqual(same.layers.map((layer) => layer.status), ['exists', 'exists']);
  t.is(same.digest, first.digest);
  const mounted = await pushImage(source, `docker://${registry.host}/dockvm/other:1`, isolated);
  t.deepEqual(mounted.layers.map((layer) => layer.status), ['mounted', 'mounted']);
  t.is(mounted.digest, first.digest);
  const reopened = await openRegistryImage(`docker://${registry.host}/dockvm/other:1`, isolated);
  t.teardown(() => reopened.close());
  t.deepEqual(await collect(await reopened.layers[0]!.openTar()), await collect(await source.layers[0]!.openTar()));
});

test('an index: the host platform by default, --arch/--variant pick another, an absent one is an error listing those there', async (t) => {
  const registry = await startRegistry(t);
  const repo = 'dockvm/multi';
  const amd64 = testImage([await fileLayer('arch', 'amd64')], { architecture: 'amd64', marker: 'amd64' });
  const arm64 = testImage([await fileLayer('arch', 'arm64')], { architecture: 'arm64', variant: 'v8', marker: 'arm64' });
  const a = await pushImage(amd64, `docker://${registry.host}/${repo}:amd64`, isolated);
  const b = await pushImage(arm64, `docker://${registry.host}/${repo}:arm64`, isolated);
  const index = await putIndex(registry.host, repo, 'latest', [
    { mediaType: a.mediaType, digest: a.digest, size: a.size, platform: { os: 'linux', architecture: 'amd64' } },
    { mediaType: b.mediaType, digest: b.digest, size: b.size, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
  ]);
  const ref = `docker://${registry.host}/${repo}:latest`;
  const chosen = await openRegistryImage(ref, { ...isolated, platform: { architecture: 'arm64' } });
  t.teardown(() => chosen.close());
  t.is(chosen.config.architecture, 'arm64');
  t.is(chosen.referenceDigest, index);
  t.is(chosen.manifest.digest, b.digest);
  const byDefault = await openRegistryImage(ref, { ...isolated, platform: { architecture: 'amd64' } });
  t.teardown(() => byDefault.close());
  t.is(byDefault.manifest.digest, a.digest);
  t.deepEqual(await resolveDigest(ref, isolated), { digest: index, mediaType: MediaType.OciIndex });

  const missing = await t.throwsAsync(openRegistryImage(ref, { ...isolated, platform: { architecture: 's390x' } }), { instanceOf: RegistryError });
  t.is(missing.message, `${registry.host}/${repo}:latest has no image for linux/s390x (it has linux/amd64, linux/arm64/v8): choose one with --os, --arch and --variant`);
  // A plain manifest is taken as it is, unless a platform was asked for that it is not.
  const wrong = await t.throwsAsync(openRegistryImage(`docker://${registry.host}/${repo}:arm64`, { ...isolated, platform: { architecture: 'amd64' } }));
  t.regex(wrong.message, /dockvm\/multi:arm64 is an image for linux\/arm64\/v8, not linux\/amd64/);
});

test('a pull by digest is verified against it; unknown tags, digests and repositories are 404s that say so', async (t) => {
  const registry = await startRegistry(t);
  const pushed = await pushImage(testImage([await fileLayer('x', 'x')]), `docker://${registry.host}/dockvm/d:1`, isolated);
  const byDigest = await openRegistryImage(`docker://${registry.host}/dockvm/d@${pushed.digest}`, isolated);
  t.teardown(() => byDigest.close());
  t.is(byDigest.manifest.digest, pushed.digest);
  t.deepEqual(byDigest.repoTags, []);
  const tag = await t.throwsAsync(openRegistryImage(`docker://${registry.host}/dockvm/d:nope`, isolated), { instanceOf: RegistryError });
  t.is(tag.message, `${registry.host}/dockvm/d:nope: no such tag in ${registry.host}/dockvm/d (404): check the tag`);
  const digest = `sha256:${'0'.repeat(64)}`;
  const unknown = await t.throwsAsync(openRegistryImage(`docker://${registry.host}/dockvm/d@${digest}`, isolated), { instanceOf: RegistryError });
  t.is(unknown.message, `${registry.host}/dockvm/d@${digest}: no such manifest in ${registry.host}/dockvm/d (404): check the digest`);
  const repo = await t.throwsAsync(openRegistryImage(`docker://${registry.host}/dockvm/none:1`, isolated), { instanceOf: RegistryError });
  t.regex(repo.message, /dockvm\/none:1: (the registry has no repository dockvm\/none|no such tag)/);
});

test('a registry that is down: connection refused, naming the registry', async (t) => {
  const port = await freePort();
  const error = await t.throwsAsync(openRegistryImage(`docker://127.0.0.1:${port}/dockvm/x:1`, isolated), { instanceOf: RegistryError });
  t.is(error.message, `cannot reach registry 127.0.0.1:${port} (GET /v2/): connection refused: is the registry running, and is the host:port right?`);
});
