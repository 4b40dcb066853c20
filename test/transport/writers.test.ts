import test from 'ava';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { existsSync } from 'node:fs';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { openImage, openImages, writeDockerArchive, writeImage } from '../../src/transport/index.js';
import { archiveWayChannel } from '../../src/transport/docker-archive-writer.js';
import { ImageReferenceError, UnsafeTarEntryError, DigestMismatchError } from '../../src/errors.js';
import { readTar, type TarEntry } from '../../src/layer/tar.js';
import { dockerArchive, layerTar } from '../fixtures/assemble.js';
import { collect } from '../helpers/streams.js';
import { Readable } from 'node:stream';
import { configFor, gzip, sampleLayers, sha, tarOf, tempDir } from './archives.js';
import { FileLayer } from '../../src/image/file-layer.js';
import type { Image } from '../../src/image/image.js';
import type { ImageConfig } from '../../src/image/config.js';

async function entriesOf(archive: Buffer): Promise<[TarEntry, Buffer][]> {
  const result: [TarEntry, Buffer][] = [];
  for await (const { entry, body } of readTar(Readable.from([archive]), { source: 'out' })) result.push([entry, await collect(body)]);
  return result;
}

async function twoImages(t: Parameters<typeof tempDir>[0]) {
  const { base, app } = await sampleLayers();
  const dir = await tempDir(t);
  await writeFile(join(dir, 'in.tar'), await dockerArchive([{ repoTag: 'app:1', layers: [base, app] }, { repoTag: 'base:1', layers: [base] }]));
  const { images, close } = await openImages(join(dir, 'in.tar'));
  t.teardown(close);
  return { base, app, dir, images };
}

test('docker-archive layout: fixed order, owners, modes and times; shared layers once', async (t) => {
  const { base, app, dir, images } = await twoImages(t);
  const out = join(dir, 'out.tar');
  await writeDockerArchive(images.map((image) => ({ image, tags: [...image.repoTags, `extra/${image.repoTags[0]}`] })), out);
  const entries = await entriesOf(await readFile(out));
  const [appImage, baseImage] = images;
  // Layers first (as docker save writes them), then the configs, manifest.json and repositories.
  t.deepEqual(entries.map(([entry]) => entry.path), [
    `${sha(base)}.tar`, `${sha(app)}.tar`,
    `${sha(appImage!.rawConfig)}.json`, `${sha(baseImage!.rawConfig)}.json`,
    'manifest.json', 'repositories',
  ]);
  for (const [entry] of entries) t.like(entry, { type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: 0 });
  t.deepEqual(JSON.parse(entries[4]![1].toString()), [
    { Config: `${sha(appImage!.rawConfig)}.json`, RepoTags: ['app:1', 'extra/app:1'], Layers: [`${sha(base)}.tar`, `${sha(app)}.tar`] },
    { Config: `${sha(baseImage!.rawConfig)}.json`, RepoTags: ['base:1', 'extra/base:1'], Layers: [`${sha(base)}.tar`] },
  ]);
  t.deepEqual(JSON.parse(entries[5]![1].toString()), { app: { '1': sha(app) }, 'extra/app': { '1': sha(app) }, base: { '1': sha(base) }, 'extra/base': { '1': sha(base) } });
  t.deepEqual(entries[2]![1], appImage!.rawConfig);
  t.deepEqual(entries[0]![1], base);
  t.deepEqual(entries[1]![1], app);
});

test('the same images written twice are the same bytes, plain and gzip (no timestamp, no name)', async (t) => {
  const { dir, images } = await twoImages(t);
  const write = async (name: string, gz: boolean) => {
    await writeDockerArchive(images.map((image) => ({ image, tags: image.repoTags })), join(dir, name), { gzip: gz });
    return readFile(join(dir, name));
  };
  t.deepEqual(await write('a.tar', false), await write('b.tar', false));
  const gz = await write('a.tar.gz', true);
  t.deepEqual(gz, await write('b.tar.gz', true));
  t.is(gz.readUInt32LE(4), 0, 'gzip mtime is 0');
  t.is(gz[3]! & 0x08, 0, 'gzip has no file name');
  t.deepEqual(gunzipSync(gz), await readFile(join(dir, 'a.tar')));
});

test('compressed source layers are stored uncompressed, named by diff_id; the result reads back the same', async (t) => {
  const { base, app } = await sampleLayers();
  const dir = await tempDir(t);
  const config = configFor([base, app]);
  await writeFile(join(dir, 'gz.tar'), await tarOf([
    { path: 'c.json', data: config },
    { path: '1.tar.gz', data: gzip(base) },
    { path: '2.tar.gz', data: gzip(app) },
    { path: 'manifest.json', data: JSON.stringify([{ Config: 'c.json', RepoTags: ['gz:1'], Layers: ['1.tar.gz', '2.tar.gz'] }]) },
  ]));
  const image = await openImage(join(dir, 'gz.tar'));
  t.teardown(() => image.close());
  await writeImage(image, join(dir, 'out.tar.gz'), { tags: ['gz:2'] });
  const entries = await entriesOf(gunzipSync(await readFile(join(dir, 'out.tar.gz'))));
  t.deepEqual(entries.slice(0, 2).map(([entry, data]) => [entry.path, data]), [[`${sha(base)}.tar`, base], [`${sha(app)}.tar`, app]]);
  const back = await openImage(join(dir, 'out.tar.gz'));
  t.teardown(() => back.close());
  t.is(back.configDigest, image.configDigest);
  t.deepEqual(back.repoTags, ['gz:2']);
  t.deepEqual(await back.layers[1]!.blob(), { mediaType: 'application/vnd.docker.image.rootfs.diff.tar', digest: `sha256:${sha(app)}`, size: app.length });
});

test('writeImage picks the format from the destination', async (t) => {
  const { dir, images } = await twoImages(t);
  const image = images[0]!;
  await writeImage(image, `oci:${join(dir, 'layout')}`, { tags: ['app:1'] });
  const layout = await openImage(`oci:${join(dir, 'layout')}:1`);
  t.is(layout.configDigest, image.configDigest);
  await layout.close();
  await writeImage(image, join(dir, 'x.tgz'), { tags: [] });
  t.is((await readFile(join(dir, 'x.tgz')))[0], 0x1f);
  await t.throwsAsync(writeImage(image, join(dir, 'x.zip'), { tags: [] }), { instanceOf: ImageReferenceError, message: /name it \*\.tar/ });
});

test('bad tags and a tag on two images are refused before anything is written', async (t) => {
  const { dir, images } = await twoImages(t);
  const out = join(dir, 'out.tar');
  await t.throwsAsync(writeDockerArchive([{ image: images[0]!, tags: ['NoTag'] }], out), { instanceOf: ImageReferenceError, message: /"NoTag" is not a valid image name:tag/ });
  await t.throwsAsync(writeDockerArchive(images.map((image) => ({ image, tags: ['same:1'] })), out), { instanceOf: ImageReferenceError, message: /tag same:1 is given to two different images/ });
  t.false(existsSync(out));
});

test('a failure while writing leaves no output file: hostile entries and bad digests', async (t) => {
  const dir = await tempDir(t);
  const evil = await layerTar([{ path: 'ok', content: 'x' }, { path: '../../etc/passwd', content: 'root::0:0::/:/bin/sh\n' }]);
  const config = configFor([evil]);
  await writeFile(join(dir, 'evil.tar'), await tarOf([
    { path: 'c.json', data: config }, { path: 'l.tar', data: evil },
    { path: 'manifest.json', data: JSON.stringify([{ Config: 'c.json', RepoTags: ['evil:1'], Layers: ['l.tar'] }]) },
  ]));
  const image = await openImage(join(dir, 'evil.tar'));
  t.teardown(() => image.close());
  const out = join(dir, 'out.tar');
  const err = await t.throwsAsync(writeDockerArchive([{ image, tags: ['evil:1'], source: 'evil.tar' }], out, { checkEntries: true }), { instanceOf: UnsafeTarEntryError });
  t.regex(err!.message, /^evil\.tar: layer sha256:\w+: entry "\.\.\/\.\.\/etc\/passwd" has a "\.\." component$/);
  t.deepEqual(await readdir(dir), ['evil.tar']);

  const { base } = await sampleLayers();
  const flipped = Buffer.from(base);
  flipped[flipped.length - 1030] = flipped[flipped.length - 1030]! ^ 0x01; // in the padding after the content: still a valid tar, another digest
  await writeFile(join(dir, 'flipped.tar'), await tarOf([
    { path: 'c.json', data: configFor([base]) }, { path: 'l.tar', data: flipped },
    { path: 'manifest.json', data: JSON.stringify([{ Config: 'c.json', RepoTags: ['f:1'], Layers: ['l.tar'] }]) },
  ]));
  const bad = await openImage(join(dir, 'flipped.tar'));
  t.teardown(() => bad.close());
  await t.throwsAsync(writeDockerArchive([{ image: bad, tags: [] }], join(dir, 'out.tar.gz'), { gzip: true }), { instanceOf: DigestMismatchError });
  t.deepEqual((await readdir(dir)).sort(), ['evil.tar', 'flipped.tar']);
});

test('entries larger than the stream buffers are indexed, checked and copied', async (t) => {
  t.timeout(30_000);
  const dir = await tempDir(t);
  const big = Buffer.alloc(3 * 1024 * 1024 + 17, 'dockvm');
  const layer = await layerTar([{ path: 'big', content: big }]);
  await writeFile(join(dir, 'big.tar'), await tarOf([
    { path: 'l.tar', data: layer }, { path: 'c.json', data: configFor([layer]) },
    { path: 'manifest.json', data: JSON.stringify([{ Config: 'c.json', RepoTags: ['big:1'], Layers: ['l.tar'] }]) },
  ]));
  const image = await openImage(join(dir, 'big.tar'));
  t.teardown(() => image.close());
  await writeDockerArchive([{ image, tags: ['big:1'] }], join(dir, 'copy.tar'), { checkEntries: true });
  const copy = await openImage(join(dir, 'copy.tar'));
  t.teardown(() => copy.close());
  t.deepEqual(await collect(await copy.layers[0]!.openTar()), layer);
});

/** `bytes` that no compressor shrinks (a wrong byte among them is not in padding). */
function incompressible(bytes: number): Buffer {
  const content = Buffer.alloc(bytes);
  for (let i = 0; i < content.length; i += 4) content.writeUInt32LE((i * 2654435761) >>> 0, i);
  return content;
}

test('a large layer read in place is copied as it lies and verified on a worker: a wrong byte fails the write, which leaves nothing', async (t) => {
  t.timeout(60_000);
  const dir = await tempDir(t);
  // Past VERIFY_ON_WORKER (16 MiB): incompressible, so that a wrong byte is not somewhere in padding.
  const content = incompressible(20 * 1024 * 1024);
  const layer = await layerTar([{ path: 'big', content }]);
  const archive = (data: Buffer) =>
    tarOf([
      { path: 'c.json', data: configFor([layer]) }, { path: 'l.tar', data },
      { path: 'manifest.json', data: JSON.stringify([{ Config: 'c.json', RepoTags: ['big:1'], Layers: ['l.tar'] }]) },
    ]);
  await writeFile(join(dir, 'good.tar'), await archive(layer));
  const good = await openImage(join(dir, 'good.tar'));
  t.teardown(() => good.close());
  await writeDockerArchive([{ image: good, tags: ['big:1'] }], join(dir, 'copy.tar'));
  const copy = await openImage(join(dir, 'copy.tar'));
  t.teardown(() => copy.close());
  t.is(sha(await collect(await copy.layers[0]!.openTar())), sha(layer));

  const flipped = Buffer.from(layer);
  flipped[10 * 1024 * 1024]! ^= 0x01;
  await writeFile(join(dir, 'flipped.tar'), await archive(flipped));
  const bad = await openImage(join(dir, 'flipped.tar'));
  t.teardown(() => bad.close());
  const err = await t.throwsAsync(writeDockerArchive([{ image: bad, tags: ['big:1'], source: 'flipped.tar' }], join(dir, 'out.tar')), { instanceOf: DigestMismatchError });
  t.regex(err!.message, /^flipped\.tar: layer sha256:[0-9a-f]{64}: content does not match its diff_id: expected sha256:[0-9a-f]{64}, got sha256:[0-9a-f]{64}$/);
  t.deepEqual((await readdir(dir)).sort(), ['copy.tar', 'flipped.tar', 'good.tar']);
});

test('a layer this process hashed as it wrote it (a new build\'s) is copied by position without a second hash; any other local layer is hashed', async (t) => {
  t.timeout(60_000);
  const dir = await tempDir(t);
  const content = incompressible(20 * 1024 * 1024);
  const layer = await layerTar([{ path: 'big', content }]);
  // the file changed after its diff_id was taken: only a second hash can tell
  const flipped = Buffer.from(layer);
  flipped[10 * 1024 * 1024]! ^= 0x01;
  await writeFile(join(dir, 'layer.tar'), flipped);
  const rawConfig = configFor([layer]);
  const imageOf = (hashed: boolean): Image => ({
    rawConfig,
    config: JSON.parse(rawConfig.toString()) as ImageConfig,
    configDigest: `sha256:${sha(rawConfig)}`,
    layers: [new FileLayer(join(dir, 'layer.tar'), `sha256:${sha(layer)}`, layer.length, hashed)],
    repoTags: ['big:1'],
  });
  await t.throwsAsync(writeDockerArchive([{ image: imageOf(false), tags: ['big:1'] }], join(dir, 'checked.tar')), { instanceOf: DigestMismatchError });
  t.false(existsSync(join(dir, 'checked.tar')));
  await writeDockerArchive([{ image: imageOf(true), tags: ['big:1'] }], join(dir, 'trusted.tar'));
  const copied = (await entriesOf(await readFile(join(dir, 'trusted.tar')))).find(([entry]) => entry.path === `${sha(layer)}.tar`);
  t.true(copied?.[1].equals(flipped), 'the file\'s bytes, as they lie');
});

test('an archive of local layers is written by position: the bytes the streaming way writes, for several images, tags and layer sizes', async (t) => {
  t.timeout(60_000);
  const dir = await tempDir(t);
  const big = Buffer.alloc(17 * 1024 * 1024 + 332);
  for (let i = 0; i < big.length; i += 4) big.writeUInt32LE((i * 2246822519) >>> 0, i);
  const { base, app } = await sampleLayers();
  const large = await layerTar([{ path: 'data/big', content: big }, { path: 'data/odd', content: 'x'.repeat(1001) }]);
  await writeFile(join(dir, 'in.tar'), await dockerArchive([{ repoTag: 'app:1', layers: [base, large, app] }, { repoTag: 'base:1', layers: [base] }]));
  const { images, close } = await openImages(join(dir, 'in.tar'));
  t.teardown(close);
  const archive = images.map((image) => ({ image, tags: [...image.repoTags] }));
  const ways: unknown[] = [];
  // other tests in this file write archives meanwhile: ours are in `dir`
  const onWay = (message: unknown) => void ((message as { path: string }).path.startsWith(dir) && ways.push(message));
  subscribe(archiveWayChannel.name, onWay);
  t.teardown(() => void unsubscribe(archiveWayChannel.name, onWay));
  await writeDockerArchive(archive, join(dir, 'by-position.tar'));
  // beforeCommit makes the writer hash as it streams: the other way.
  let streamedSha = '';
  await writeDockerArchive(archive, join(dir, 'streamed.tar'), { beforeCommit: (sha256) => void (streamedSha = sha256) });
  t.deepEqual(ways, [{ path: join(dir, 'by-position.tar'), byPosition: true }, { path: join(dir, 'streamed.tar'), byPosition: false }]);
  const [byPosition, streamed] = [await readFile(join(dir, 'by-position.tar')), await readFile(join(dir, 'streamed.tar'))];
  t.is(byPosition.length, streamed.length);
  t.true(byPosition.equals(streamed));
  t.is(sha(byPosition), streamedSha);
});
