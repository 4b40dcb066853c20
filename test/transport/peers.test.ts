// Real tools read what dockvm writes, and dockvm reads what they write: skopeo, podman, umoci.
// Kept to a handful of invocations: each costs a fraction of a second to a few seconds.
import test from 'ava';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { openImage, writeDockerArchive, writeOciLayout, type OpenedImage } from '../../src/transport/index.js';
import { dockerArchive, layerTar } from '../fixtures/assemble.js';
import { hasTool, peer, removeFromPodman, uniqueName } from '../helpers/peers.js';
import { tempDir } from './archives.js';

const tools = ['skopeo', 'podman', 'umoci'] as const;
const missing = tools.filter((tool) => !hasTool(tool));
const peerTest = missing.length ? test.skip : test.serial;
if (missing.length) console.warn(`peer tests skipped: ${missing.join(', ')} not installed (scripts/setup installs them)`);

/** Two images sharing a base layer, from the hand-built fixture (independent of our writer). */
async function sources(t: Parameters<typeof tempDir>[0]) {
  const dir = await tempDir(t);
  const base = await layerTar([
    { path: 'etc', type: 'directory' },
    { path: 'etc/hello', content: 'hello from dockvm\n' },
    { path: 'bin', type: 'directory' },
    { path: 'bin/tool', content: '#!/bin/sh\n', mode: 0o755 },
  ]);
  const app = await layerTar([{ path: 'app', type: 'directory' }, { path: 'app/run', content: 'run\n', mode: 0o700, uid: 1000, gid: 1000 }]);
  await writeFile(join(dir, 'src.tar'), await dockerArchive([
    { repoTag: 'app:1', layers: [base, app], config: { config: { Cmd: ['/app/run'] } } },
    { repoTag: 'base:1', layers: [base] },
  ]));
  const images: OpenedImage[] = [];
  for (const pick of ['app:1', 'base:1']) {
    const image = await openImage(`docker-archive:${join(dir, 'src.tar')}:${pick}`);
    t.teardown(() => image.close());
    images.push(image);
  }
  return { dir, app: images[0]!, base: images[1]! };
}

const diffIds = (image: { layers: readonly { diffId: string }[] }) => image.layers.map((layer) => layer.diffId);

peerTest('skopeo reads our docker-archive and copies it to an OCI layout that we read back', async (t) => {
  const { dir, app, base } = await sources(t);
  const archive = join(dir, 'ours.tar');
  await writeDockerArchive([{ image: app, tags: ['app:1'] }, { image: base, tags: ['base:1'] }], archive);
  const manifest = JSON.parse(await peer('skopeo', ['inspect', '--raw', `docker-archive:${archive}:app:1`]));
  t.is(manifest.config.digest, app.configDigest);
  t.deepEqual(manifest.layers.map((layer: { digest: string }) => layer.digest), diffIds(app));
  await peer('skopeo', ['copy', '-q', `docker-archive:${archive}:base:1`, `oci:${join(dir, 'skopeo-oci')}:base`]);
  const copied = await openImage(`oci:${join(dir, 'skopeo-oci')}:base`);
  t.teardown(() => copied.close());
  t.deepEqual(diffIds(copied), diffIds(base));
  const skopeoConfig = JSON.parse(await peer('skopeo', ['inspect', '--raw', `oci:${join(dir, 'skopeo-oci')}:base`])).config.digest;
  t.is(copied.configDigest, skopeoConfig);
});

peerTest('podman loads every image of a merged archive; its docker-archive and oci-archive saves read back', async (t) => {
  const { dir, app, base } = await sources(t);
  const [appName, baseName] = [uniqueName('app'), uniqueName('base')];
  removeFromPodman(t, `localhost/${appName}:1`, `localhost/${baseName}:1`);
  const archive = join(dir, 'merged.tar.gz');
  await writeDockerArchive([{ image: app, tags: [`${appName}:1`] }, { image: base, tags: [`${baseName}:1`] }], archive, { gzip: true });
  // podman 4.3 / skopeo 1.9 cannot open a gzipped docker-archive by path (even one gzip(1) made: "loading tar
  // component manifest.json: unexpected EOF"), so the decompressed stream goes in on stdin.
  const loaded = await peer('podman', ['load'], { input: gunzipSync(await readFile(archive)) });
  t.regex(loaded, new RegExp(`localhost/${appName}:1`));
  t.regex(loaded, new RegExp(`localhost/${baseName}:1`));
  const ids = JSON.parse(await peer('podman', ['image', 'inspect', `localhost/${appName}:1`, `localhost/${baseName}:1`]));
  t.deepEqual(ids.map((image: { Id: string }) => `sha256:${image.Id}`), [app.configDigest, base.configDigest]);
  t.deepEqual(ids[0].RootFS.Layers, diffIds(app));

  await peer('podman', ['save', '-q', '--format', 'docker-archive', '-o', join(dir, 'podman.tar'), `localhost/${appName}:1`]);
  const saved = await openImage(join(dir, 'podman.tar'));
  t.teardown(() => saved.close());
  t.is(saved.configDigest, app.configDigest);
  t.deepEqual(diffIds(saved), diffIds(app));
  t.deepEqual(saved.repoTags, [`localhost/${appName}:1`]);

  await peer('podman', ['save', '-q', '--format', 'oci-archive', '-o', join(dir, 'podman-oci.tar'), `localhost/${appName}:1`]);
  const oci = await openImage(`oci-archive:${join(dir, 'podman-oci.tar')}`);
  t.teardown(() => oci.close());
  t.deepEqual(diffIds(oci), diffIds(app));
  // podman re-encodes the config for the OCI form; we read the config its manifest names.
  const ociManifest = JSON.parse(await peer('skopeo', ['inspect', '--raw', `oci-archive:${join(dir, 'podman-oci.tar')}`]));
  t.is(oci.configDigest, ociManifest.config.digest);
  t.deepEqual(oci.config.config?.Cmd, ['/app/run']);
});

peerTest('umoci unpacks our OCI layout; skopeo turns it into a docker-archive that we read back', async (t) => {
  const { dir, app } = await sources(t);
  const layout = join(dir, 'layout');
  await writeOciLayout(app, layout, { ref: 'v1' });
  const bundle = join(dir, 'bundle');
  await peer('umoci', ['unpack', '--image', `${layout}:v1`, bundle]);
  t.is(await readFile(join(bundle, 'rootfs', 'etc', 'hello'), 'utf8'), 'hello from dockvm\n');
  t.is(await readFile(join(bundle, 'rootfs', 'app', 'run'), 'utf8'), 'run\n');
  const { stat } = await import('node:fs/promises');
  const run = await stat(join(bundle, 'rootfs', 'app', 'run'));
  t.is(run.mode & 0o7777, 0o700);
  t.is(run.uid, 1000);

  await peer('skopeo', ['copy', '-q', `oci:${layout}:v1`, `docker-archive:${join(dir, 'skopeo.tar')}:app:from-skopeo`]);
  const back = await openImage(join(dir, 'skopeo.tar'));
  t.teardown(() => back.close());
  t.is(back.configDigest, app.configDigest);
  t.deepEqual(diffIds(back), diffIds(app));
  t.deepEqual(back.repoTags, ['docker.io/library/app:from-skopeo']); // skopeo writes the full name
});
