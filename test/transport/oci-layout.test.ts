import test from 'ava';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { hostArchitecture, openImage, openImages, writeOciLayout } from '../../src/transport/index.js';
import { DigestMismatchError, ImageFormatError, ImageReferenceError } from '../../src/errors.js';
import { dockerArchive } from '../fixtures/assemble.js';
import { collect } from '../helpers/streams.js';
import { readRange } from '../../src/transport/streams.js';
import { configFor, gzip, sampleLayers, sha, tarOf, tempDir } from './archives.js';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';

/** Write blobs and an index.json by hand; returns each blob's descriptor fields. */
async function handLayout(dir: string, index: unknown, blobs: Buffer[]): Promise<void> {
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  for (const blob of blobs) await writeFile(join(dir, 'blobs', 'sha256', sha(blob)), blob);
  await writeFile(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  await writeFile(join(dir, 'index.json'), JSON.stringify(index));
}

const desc = (mediaType: string, blob: Buffer, extra: Record<string, unknown> = {}) => ({ mediaType, digest: `sha256:${sha(blob)}`, size: blob.length, ...extra });

function manifestFor(config: Buffer, layers: { mediaType: string; blob: Buffer }[]): Buffer {
  return Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: desc('application/vnd.oci.image.config.v1+json', config),
    layers: layers.map(({ mediaType, blob }) => desc(mediaType, blob)),
  }));
}

async function sourceImage(t: Parameters<typeof tempDir>[0]) {
  const { base, app } = await sampleLayers();
  const dir = await tempDir(t);
  await writeFile(join(dir, 'src.tar'), await dockerArchive([{ repoTag: 'app:1.0', layers: [base, app] }]));
  const image = await openImage(join(dir, 'src.tar'));
  t.teardown(() => image.close());
  return { base, app, dir, image };
}

test('an image written as an OCI layout reads back the same, by ref or by its tag part', async (t) => {
  const { app, dir, image } = await sourceImage(t);
  const layout = join(dir, 'layout');
  await writeOciLayout(image, layout, { ref: 'example.com/app:1.0' });
  t.deepEqual(JSON.parse(await readFile(join(layout, 'oci-layout'), 'utf8')), { imageLayoutVersion: '1.0.0' });
  const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8'));
  t.is(index.manifests.length, 1);
  t.deepEqual(index.manifests[0].annotations, { 'org.opencontainers.image.ref.name': 'example.com/app:1.0' });
  for (const reference of [`oci:${layout}:example.com/app:1.0`, `oci:${layout}:1.0`, `oci:${layout}`]) {
    const copy = await openImage(reference);
    t.is(copy.configDigest, image.configDigest, reference);
    t.deepEqual(copy.repoTags, ['example.com/app:1.0']);
    const blob = await copy.layers[1]!.blob();
    t.is(blob.mediaType, 'application/vnd.oci.image.layer.v1.tar+gzip');
    t.deepEqual(await collect(await copy.layers[1]!.openTar()), app);
    await copy.close();
  }
  const err = await t.throwsAsync(openImage(`oci:${layout}:2.0`), { instanceOf: ImageReferenceError });
  t.regex(err!.message, /no image named "2\.0" in index\.json \(it has: example\.com\/app:1\.0\)/);
});

test('the same image written twice gives the same layout, byte for byte', async (t) => {
  const { dir, image } = await sourceImage(t);
  const listing = async (layout: string) => {
    const files: [string, Buffer][] = [];
    for (const name of ['oci-layout', 'index.json', ...(await readdir(join(layout, 'blobs', 'sha256'))).sort().map((b) => `blobs/sha256/${b}`)]) {
      files.push([name, await readFile(join(layout, name))]);
    }
    return files;
  };
  await writeOciLayout(image, join(dir, 'one'), { ref: 'latest' });
  await writeOciLayout(image, join(dir, 'two'), { ref: 'latest' });
  const one = await listing(join(dir, 'one'));
  t.is(one.length, 2 + 4); // config, manifest, two layers
  t.deepEqual(one, await listing(join(dir, 'two')));
});

test('adding to an existing layout keeps other refs and replaces the same ref', async (t) => {
  const { dir, image } = await sourceImage(t);
  const layout = join(dir, 'layout');
  await writeOciLayout(image, layout, { ref: 'a' });
  await writeOciLayout(image, layout, { ref: 'b' });
  await writeOciLayout(image, layout, { ref: 'a' });
  const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8'));
  t.deepEqual(index.manifests.map((m: { annotations: Record<string, string> }) => m.annotations['org.opencontainers.image.ref.name']), ['b', 'a']);
  const { images, close } = await openImages(`oci:${layout}`);
  t.teardown(close);
  t.is(images.length, 2);
  await mkdir(join(dir, 'not-a-layout'));
  await writeFile(join(dir, 'not-a-layout', 'file'), 'x');
  await t.throwsAsync(writeOciLayout(image, join(dir, 'not-a-layout')), { instanceOf: ImageReferenceError, message: /is not an OCI layout/ });
});

test('nested indexes: this host\'s platform is picked, attestations skipped, else the first', async (t) => {
  const { base, app } = await sampleLayers();
  const dir = await tempDir(t);
  const other = hostArchitecture() === 'arm64' ? 'amd64' : 'arm64';
  const configs = [other, hostArchitecture()].map((architecture) => configFor([base, app], { architecture }));
  const layers = [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', blob: base }, { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', blob: gzip(app) }];
  const manifests = configs.map((config) => manifestFor(config, layers));
  const attestation = Buffer.from('{"not":"an image"}');
  const nested = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: [
      desc(OCI_MANIFEST, attestation, { platform: { architecture: 'unknown', os: 'unknown' } }),
      desc(OCI_MANIFEST, manifests[0]!, { platform: { architecture: other, os: 'linux' } }),
      desc(OCI_MANIFEST, manifests[1]!, { platform: { architecture: hostArchitecture(), os: 'linux' } }),
    ],
  }));
  const layout = join(dir, 'multi');
  await handLayout(layout, { schemaVersion: 2, manifests: [desc(OCI_INDEX, nested, { annotations: { 'org.opencontainers.image.ref.name': 'multi' } })] },
    [base, gzip(app), ...configs, ...manifests, attestation, nested]);
  for (const reference of [`oci:${layout}`, `oci:${layout}:multi`]) {
    const image = await openImage(reference);
    t.is(image.config.architecture, hostArchitecture(), reference);
    t.deepEqual(await collect(await image.layers[0]!.openTar()), base);
    t.deepEqual((await image.layers[0]!.localTar!())?.size, base.length);
    t.is(await image.layers[1]!.localTar!(), undefined);
    await image.close();
  }
  // Top-level manifests without platforms: the configs decide.
  const flat = join(dir, 'flat');
  await handLayout(flat, { schemaVersion: 2, manifests: manifests.map((m) => desc(OCI_MANIFEST, m)) }, [base, gzip(app), ...configs, ...manifests]);
  const image = await openImage(`oci:${flat}`);
  t.is(image.config.architecture, hostArchitecture());
  await image.close();
});

test('a platform asked for (dockvm shell --platform): picked from an index by descriptor or config; one the index lacks, or a single image of another, is an error naming both', async (t) => {
  const { base, app } = await sampleLayers();
  const dir = await tempDir(t);
  const configs = [configFor([base, app], { architecture: 'amd64' }), configFor([base, app], { architecture: 'arm64', variant: 'v8' })];
  const layers = [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', blob: base }, { mediaType: 'application/vnd.oci.image.layer.v1.tar', blob: app }];
  const manifests = configs.map((config) => manifestFor(config, layers));
  const layout = join(dir, 'multi');
  await handLayout(layout, {
    schemaVersion: 2,
    manifests: [
      desc(OCI_MANIFEST, manifests[0]!, { platform: { architecture: 'amd64', os: 'linux' } }),
      desc(OCI_MANIFEST, manifests[1]!, { platform: { architecture: 'arm64', os: 'linux', variant: 'v8' } }),
    ],
  }, [base, app, ...configs, ...manifests]);
  for (const architecture of ['amd64', 'arm64']) {
    const image = await openImage(`oci:${layout}`, { platform: { os: 'linux', architecture } });
    t.is(image.config.architecture, architecture);
    await image.close();
  }
  await t.throwsAsync(openImage(`oci:${layout}`, { platform: { os: 'linux', architecture: 'riscv64' } }), {
    instanceOf: ImageReferenceError,
    message: /: no image for linux\/riscv64 \(it has: linux\/amd64, linux\/arm64\/v8\)$/,
  });
  // the same index without platforms in its descriptors: the configs decide
  const flat = join(dir, 'flat');
  await handLayout(flat, { schemaVersion: 2, manifests: manifests.map((m) => desc(OCI_MANIFEST, m)) }, [base, app, ...configs, ...manifests]);
  const arm64 = await openImage(`oci:${flat}`, { platform: { os: 'linux', architecture: 'arm64' } });
  t.is(arm64.config.architecture, 'arm64');
  await arm64.close();
  // a docker-archive holds one image per tag: another platform's is refused, not run as this one
  await writeFile(join(dir, 'one.tar'), await dockerArchive([{ repoTag: 'app:1.0', layers: [base, app], architecture: 'arm64', config: { variant: 'v8' } }]));
  await t.throwsAsync(openImage(join(dir, 'one.tar'), { platform: { os: 'linux', architecture: 'amd64' } }), {
    instanceOf: ImageReferenceError,
    message: /one\.tar is an image for linux\/arm64\/v8, not linux\/amd64$/,
  });
  const same = await openImage(join(dir, 'one.tar'), { platform: { os: 'linux', architecture: 'arm64' } });
  t.is(same.config.variant, 'v8');
  await same.close();
});

test('an oci-archive (a layout in a tar) reads like the directory', async (t) => {
  const { base, app } = await sampleLayers();
  const dir = await tempDir(t);
  const config = configFor([base, app]);
  const manifest = manifestFor(config, [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', blob: gzip(base) }, { mediaType: 'application/vnd.oci.image.layer.v1.tar', blob: app }]);
  const path = join(dir, 'image.oci.tar');
  await writeFile(path, await tarOf([
    { path: 'oci-layout', data: '{"imageLayoutVersion":"1.0.0"}' },
    { path: 'index.json', data: JSON.stringify({ schemaVersion: 2, manifests: [desc(OCI_MANIFEST, manifest, { annotations: { 'org.opencontainers.image.ref.name': 'v1' } })] }) },
    ...[gzip(base), app, config, manifest].map((blob) => ({ path: `blobs/sha256/${sha(blob)}`, data: blob })),
  ]));
  const image = await openImage(`oci-archive:${path}:v1`);
  t.teardown(() => image.close());
  t.is(image.configDigest, `sha256:${sha(config)}`);
  t.deepEqual(image.repoTags, []); // a bare tag is not a name:tag
  t.deepEqual(await collect(await image.layers[0]!.openTar()), base);
  const local = await image.layers[1]!.localTar!();
  t.is(local?.path, path);
  t.deepEqual(await readRange(path, local!.offset, local!.size), app);
});

test('bad layouts: zstd layers, tampered blobs, wrong media types', async (t) => {
  const { base } = await sampleLayers();
  const dir = await tempDir(t);
  const config = configFor([base]);
  const zstdBlob = Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.alloc(20)]);
  const zstd = manifestFor(config, [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd', blob: zstdBlob }]);
  await handLayout(join(dir, 'zstd'), { schemaVersion: 2, manifests: [desc(OCI_MANIFEST, zstd)] }, [zstdBlob, config, zstd]);
  const image = await openImage(`oci:${join(dir, 'zstd')}`);
  t.teardown(() => image.close());
  t.is((await image.layers[0]!.blob()).mediaType, 'application/vnd.oci.image.layer.v1.tar+zstd');
  await t.throwsAsync(image.layers[0]!.openTar(), { instanceOf: ImageFormatError, message: /zstd-compressed, which dockvm cannot read yet/ });

  const good = manifestFor(config, [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', blob: base }]);
  const tamperedDir = join(dir, 'tampered');
  await handLayout(tamperedDir, { schemaVersion: 2, manifests: [desc(OCI_MANIFEST, good)] }, [base, config]);
  await writeFile(join(tamperedDir, 'blobs', 'sha256', sha(good)), Buffer.concat([good, Buffer.from(' ')]));
  const err = await t.throwsAsync(openImage(`oci:${tamperedDir}`), { instanceOf: DigestMismatchError });
  t.regex(err!.message, new RegExp(`tampered: manifest sha256:${sha(good)}: content does not match its descriptor: expected sha256:${sha(good)} \\(\\d+ bytes\\), got sha256:\\w+ \\(\\d+ bytes\\)`));

  const odd = manifestFor(config, [{ mediaType: 'application/vnd.example.layer+bzip2', blob: base }]);
  await handLayout(join(dir, 'odd'), { schemaVersion: 2, manifests: [desc(OCI_MANIFEST, odd)] }, [base, config, odd]);
  await t.throwsAsync(openImage(`oci:${join(dir, 'odd')}`), { instanceOf: ImageFormatError, message: /media type application\/vnd\.example\.layer\+bzip2, which dockvm cannot read/ });
  await t.throwsAsync(openImage(`oci:${join(dir, 'missing')}`), { instanceOf: ImageReferenceError, message: /is not a directory/ });
});
