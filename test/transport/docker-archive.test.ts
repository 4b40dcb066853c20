import test from 'ava';
import { open, readdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImage, openImages } from '../../src/transport/index.js';
import { DigestMismatchError, ImageFormatError, ImageReferenceError } from '../../src/errors.js';
import { dockerArchive } from '../fixtures/assemble.js';
import { collect } from '../helpers/streams.js';
import { configFor, gzip, sampleLayers, sha, tarOf, tempDir } from './archives.js';
import { readRange } from '../../src/transport/streams.js';

async function twoImages(t: Parameters<typeof tempDir>[0]) {
  const { base, app } = await sampleLayers();
  const dir = await tempDir(t);
  const path = join(dir, 'two.tar');
  await writeFile(path, await dockerArchive([
    { repoTag: 'app:1', layers: [base, app] },
    { repoTag: 'base:2', layers: [base] },
  ]));
  return { base, app, dir, path };
}

test('every image of a manifest.json archive, with tags, configs and layers', async (t) => {
  const { base, app, path } = await twoImages(t);
  const { images, close } = await openImages(path);
  t.teardown(close);
  t.deepEqual(images.map((image) => image.repoTags), [['app:1'], ['base:2']]);
  const [first, second] = images;
  t.deepEqual(first!.layers.map((layer) => layer.diffId), [`sha256:${sha(base)}`, `sha256:${sha(app)}`]);
  t.is(first!.configDigest, `sha256:${sha(first!.rawConfig)}`);
  t.is(second!.config.rootfs.diff_ids.length, 1);
  t.deepEqual(await collect(await first!.layers[1]!.openTar()), app);
  t.deepEqual(await collect(await first!.layers[1]!.openBlob()), app);
});

test('picking one image: NAME:TAG in the reference or options, @N, else the first', async (t) => {
  const { path } = await twoImages(t);
  const pick = async (reference: string, options = {}) => {
    const image = await openImage(reference, options);
    await image.close();
    return image.repoTags;
  };
  t.deepEqual(await pick(path), ['app:1']);
  t.deepEqual(await pick(`docker-archive:${path}:base:2`), ['base:2']);
  t.deepEqual(await pick(`docker-archive:${path}:docker.io/library/base:2`), ['base:2']);
  t.deepEqual(await pick(`docker-archive:${path}:@1`), ['base:2']);
  t.deepEqual(await pick(path, { name: 'base', tag: '2' }), ['base:2']);
  const err = await t.throwsAsync(pick(path, { name: 'nope', tag: '1' }), { instanceOf: ImageReferenceError });
  t.regex(err!.message, /no image tagged nope:1 .*it has: app:1, base:2/);
  await t.throwsAsync(pick(path, { name: 'base' }), { instanceOf: ImageReferenceError, message: /both an image name and a tag/ });
  await t.throwsAsync(pick(`docker-archive:${path}:@5`), { instanceOf: ImageReferenceError, message: /no @5/ });
});

test('an uncompressed layer: blob hashed lazily to its diff_id, localTar points at its bytes', async (t) => {
  const { app, path } = await twoImages(t);
  const image = await openImage(path);
  t.teardown(() => image.close());
  const layer = image.layers[1]!;
  const local = await layer.localTar!();
  t.truthy(local);
  t.is(local!.path, path);
  t.deepEqual(await readRange(local!.path, local!.offset, local!.size), app);

  // Lazily: a byte changed in the archive after it was opened is seen by blob(), so opening hashed nothing.
  const middle = local!.offset + (local!.size >> 1);
  const flip = async () => {
    const file = await open(path, 'r+');
    const byte = Buffer.alloc(1);
    await file.read(byte, 0, 1, middle);
    byte[0]! ^= 0xff;
    await file.write(byte, 0, 1, middle);
    await file.close();
  };
  const changed = await openImage(path);
  t.teardown(() => changed.close());
  await flip();
  await t.throwsAsync(changed.layers[1]!.blob(), { instanceOf: DigestMismatchError });
  await flip(); // back as it was
  // ...and to its diff_id, once: after the first blob(), the result is kept
  t.deepEqual(await layer.blob(), { mediaType: 'application/vnd.docker.image.rootfs.diff.tar', digest: layer.diffId, size: app.length });
  await flip();
  t.deepEqual((await layer.blob()).digest, layer.diffId);
});

test('a gzip archive is recognised by its bytes, not its name; the temp copy goes away on close', async (t) => {
  const { path, dir } = await twoImages(t);
  const { readFile } = await import('node:fs/promises');
  const plain = await readFile(path);
  const misnamedGzip = join(dir, 'looks-plain.tar');
  const misnamedPlain = join(dir, 'looks-gzipped.tar.gz');
  await writeFile(misnamedGzip, gzip(plain));
  await writeFile(misnamedPlain, plain);
  // Other test files decompress archives into the same temp directory at the same time: ours is the
  // new temp file that holds this archive's bytes.
  const temps = async () => new Set((await readdir(tmpdir())).filter((name) => name.startsWith('dockvm-archive-')));
  const before = await temps();
  const image = await openImage(misnamedGzip);
  const ours: string[] = [];
  for (const name of await temps()) {
    if (before.has(name)) continue;
    const bytes = await readFile(join(tmpdir(), name)).catch(() => undefined);
    if (bytes?.equals(plain)) ours.push(name);
  }
  t.is(ours.length, 1);
  t.deepEqual(image.repoTags, ['app:1']);
  t.deepEqual(await collect(await image.layers[0]!.openTar()), (await sampleLayers()).base);
  await image.close();
  t.false((await temps()).has(ours[0]!));
  const other = await openImage(misnamedPlain);
  t.deepEqual(other.repoTags, ['app:1']);
  await other.close();
});

test('gzip-compressed layers inside the archive', async (t) => {
  const { base, app } = await sampleLayers();
  const dir = await tempDir(t);
  const config = configFor([base, app]);
  const [gzBase, gzApp] = [gzip(base), gzip(app)];
  const path = join(dir, 'gz-layers.tar');
  await writeFile(path, await tarOf([
    { path: `${sha(config)}.json`, data: config },
    { path: 'l1/layer.tar', data: gzBase },
    { path: 'l2/layer.tar', data: gzApp },
    { path: 'manifest.json', data: JSON.stringify([{ Config: `${sha(config)}.json`, RepoTags: ['gz:1'], Layers: ['l1/layer.tar', 'l2/layer.tar'] }]) },
  ]));
  const image = await openImage(path);
  t.teardown(() => image.close());
  const layer = image.layers[1]!;
  t.deepEqual(await layer.blob(), { mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip', digest: `sha256:${sha(gzApp)}`, size: gzApp.length });
  t.deepEqual(await collect(await layer.openTar()), app);
  t.deepEqual(await collect(await layer.openBlob()), gzApp);
  t.is(await layer.localTar!(), undefined);
});

test('newer docker save: blobs/sha256/, index.json, and <id>/layer.tar symlinks into blobs', async (t) => {
  const { base, app } = await sampleLayers();
  const dir = await tempDir(t);
  const config = configFor([base, app]);
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${sha(config)}`, size: config.length },
    layers: [base, app].map((layer) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: `sha256:${sha(layer)}`, size: layer.length })),
  }));
  const index = JSON.stringify({
    schemaVersion: 2,
    manifests: [{
      mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${sha(manifest)}`, size: manifest.length,
      annotations: { 'io.containerd.image.name': 'docker.io/library/new:1', 'org.opencontainers.image.ref.name': '1' },
    }],
  });
  const path = join(dir, 'docker25.tar');
  await writeFile(path, await tarOf([
    { path: 'blobs/sha256/', data: '' },
    { path: `blobs/sha256/${sha(base)}`, data: base },
    { path: `blobs/sha256/${sha(app)}`, data: app },
    { path: `blobs/sha256/${sha(config)}`, data: config },
    { path: `blobs/sha256/${sha(manifest)}`, data: manifest },
    { path: 'deadbeef/layer.tar', symlink: `../blobs/sha256/${sha(app)}` },
    { path: 'index.json', data: index },
    { path: 'oci-layout', data: '{"imageLayoutVersion":"1.0.0"}' },
    { path: 'manifest.json', data: JSON.stringify([{ Config: `blobs/sha256/${sha(config)}`, RepoTags: ['new:1'], Layers: [`blobs/sha256/${sha(base)}`, 'deadbeef/layer.tar'] }]) },
  ]));
  const image = await openImage(path);
  t.teardown(() => image.close());
  t.is(image.configDigest, `sha256:${sha(config)}`);
  t.deepEqual(await collect(await image.layers[1]!.openTar()), app);
  // The same archive read as an OCI layout gives the same image.
  const oci = await openImage(`oci-archive:${path}:1`);
  t.teardown(() => oci.close());
  t.is(oci.configDigest, image.configDigest);
  t.deepEqual(oci.repoTags, ['docker.io/library/new:1']);
  t.deepEqual(await collect(await oci.layers[0]!.openTar()), base);
});

test('the legacy form: repositories and <id>/json + layer.tar, no manifest.json', async (t) => {
  const { base, app } = await sampleLayers();
  const dir = await tempDir(t);
  const [bottom, top] = ['a'.repeat(64), 'b'.repeat(64)];
  const path = join(dir, 'legacy.tar');
  await writeFile(path, await tarOf([
    { path: 'repositories', data: JSON.stringify({ old: { '1': top, latest: top } }) },
    { path: `${bottom}/VERSION`, data: '1.0' },
    { path: `${bottom}/json`, data: JSON.stringify({ id: bottom, created: '2000-01-01T00:00:00Z' }) },
    { path: `${bottom}/layer.tar`, data: base },
    { path: `${top}/VERSION`, data: '1.0' },
    { path: `${top}/json`, data: JSON.stringify({ id: top, parent: bottom, os: 'linux', architecture: 'arm64', created: '2000-01-02T00:00:00Z', config: { Cmd: ['/app/run'] } }) },
    { path: `${top}/layer.tar`, data: gzip(app) },
  ]));
  const image = await openImage(path);
  t.teardown(() => image.close());
  t.deepEqual(image.repoTags, ['old:1', 'old:latest']);
  t.deepEqual(image.config.rootfs.diff_ids, [`sha256:${sha(base)}`, `sha256:${sha(app)}`]);
  t.like(image.config, { architecture: 'arm64', os: 'linux', created: '2000-01-02T00:00:00Z', config: { Cmd: ['/app/run'] } });
  t.is(image.configDigest, `sha256:${sha(image.rawConfig)}`);
  t.deepEqual(await collect(await image.layers[1]!.openTar()), app);
});

test('broken archives: each error names the archive and what is wrong', async (t) => {
  const { base, app } = await sampleLayers();
  const dir = await tempDir(t);
  const config = configFor([base, app]);
  const configName = `${sha(config)}.json`;
  const manifest = (layers: string[]) => JSON.stringify([{ Config: configName, RepoTags: ['x:1'], Layers: layers }]);
  const cases: { name: string; files: Parameters<typeof tarOf>[0]; error: new (...args: never[]) => Error; message: RegExp; read?: boolean }[] = [
    { name: 'no-manifest', files: [{ path: 'hello', data: 'x' }], error: ImageFormatError, message: /no-manifest\.tar: not a docker-archive: it has no manifest\.json/ },
    { name: 'bad-json', files: [{ path: 'manifest.json', data: '[{' }], error: ImageFormatError, message: /bad-json\.tar: "manifest\.json": not valid JSON/ },
    { name: 'bad-shape', files: [{ path: 'manifest.json', data: '[{"Config":"c.json","Layers":"x"}]' }], error: ImageFormatError, message: /bad-shape\.tar: manifest\.json: \[0\]\.Layers: / },
    { name: 'no-config', files: [{ path: 'manifest.json', data: manifest([]) }], error: ImageFormatError, message: new RegExp(`no-config\\.tar: config "${configName}" is missing`) },
    { name: 'config-digest', files: [{ path: configName, data: configFor([base]) }, { path: 'manifest.json', data: manifest(['1.tar']) }], error: DigestMismatchError, message: /config-digest\.tar: config .* expected sha256:\w+, got sha256:\w+/ },
    { name: 'config-shape', files: [{ path: 'c.json', data: '{"os":"linux"}' }, { path: 'manifest.json', data: '[{"Config":"c.json","Layers":[]}]' }], error: ImageFormatError, message: /config-shape\.tar: config "c\.json": architecture: / },
    { name: 'count', files: [{ path: configName, data: config }, { path: 'manifest.json', data: manifest(['1.tar']) }], error: ImageFormatError, message: /lists 1 layers but the config's rootfs\.diff_ids has 2/ },
    { name: 'no-layer', files: [{ path: configName, data: config }, { path: '1.tar', data: base }, { path: 'manifest.json', data: manifest(['1.tar', '2.tar']) }], error: ImageFormatError, message: /no-layer\.tar: layer sha256:\w+ is missing \(no entry "2\.tar" in the archive\)/, read: true },
    { name: 'flipped', files: [{ path: configName, data: config }, { path: '1.tar', data: base }, { path: '2.tar', data: Buffer.from(app).fill(0x41, 600, 601) }, { path: 'manifest.json', data: manifest(['1.tar', '2.tar']) }], error: DigestMismatchError, message: new RegExp(`flipped\\.tar: layer "2\\.tar": content does not match its digest: expected sha256:${sha(app)}, got sha256:\\w+`), read: true },
  ];
  for (const { name, files, error, message, read } of cases) {
    const path = join(dir, `${name}.tar`);
    await writeFile(path, await tarOf(files));
    const err = await t.throwsAsync(async () => {
      const image = await openImage(path);
      try {
        if (read) for (const layer of image.layers) await collect(await layer.openTar());
      } finally {
        await image.close();
      }
    }, { instanceOf: error }, name);
    t.regex(err?.message ?? '', message, name);
    t.false(err?.message.includes('\n'), name);
  }
});
