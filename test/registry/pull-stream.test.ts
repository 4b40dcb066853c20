// pull writes an archive's first layer while it downloads, sized by the gzip trailer (live-tar.ts). The
// archive must be the one the spooled way writes, byte for byte, whichever way it went: streamed, spooled
// because the registry does no ranges, or written again because the trailer's size was wrong (a
// multi-member gzip). A wrong byte in the streamed layer fails the pull and leaves nothing behind.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { pull } from '../../src/cli/pull.js';
import { DigestMismatchError } from '../../src/errors.js';
import { sha256, type Digest } from '../../src/image/digest.js';
import { MediaType } from '../../src/image/media-types.js';
import { writeDockerArchive } from '../../src/transport/index.js';
import { openRegistryImage, pushImage, RegistryLayer } from '../../src/transport/registry/index.js';
import { startFaultProxy, startRegistry } from '../helpers/registry.js';
import { tempDir } from '../transport/archives.js';
import { fileLayer, testImage } from './images.js';

const isolated = { authFiles: [] as string[], retry: { attempts: 4, backoffMs: 10 } };

/** Count the layers pull streamed (a spy on RegistryLayer.streamedTar; the tests run serially for it). */
function countStreamed(t: { teardown(fn: () => void): void }): { streamed: number } {
  const original = RegistryLayer.prototype.streamedTar;
  const counter = { streamed: 0 };
  RegistryLayer.prototype.streamedTar = async function (this: RegistryLayer) {
    const result = await original.call(this);
    if (result) counter.streamed++;
    return result;
  };
  t.teardown(() => {
    RegistryLayer.prototype.streamedTar = original;
  });
  return counter;
}

/** The archive as the spooled way writes it: every layer downloaded first, then copied in. */
async function spooledArchive(ref: string, path: string, tag: string): Promise<Buffer> {
  const image = await openRegistryImage(ref, isolated);
  try {
    await image.fetchLayers();
    await writeDockerArchive([{ image, tags: [tag] }], path);
  } finally {
    await image.close();
  }
  return readFile(path);
}

/** PUT an image whose layer blobs are given as they are (any gzip), with a Docker schema 2 manifest. */
async function putImage(host: string, repository: string, tag: string, layers: { blob: Buffer; diffId: Digest }[]): Promise<void> {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map((layer) => layer.diffId) } }));
  for (const blob of [config, ...layers.map((layer) => layer.blob)]) {
    const started = await fetch(`http://${host}/v2/${repository}/blobs/uploads/`, { method: 'POST' });
    const location = new URL(started.headers.get('location')!, `http://${host}`);
    location.searchParams.set('digest', sha256(blob));
    const put = await fetch(location, { method: 'PUT', body: blob, headers: { 'content-type': 'application/octet-stream' } });
    if (put.status !== 201) throw new Error(`blob upload: ${put.status}`);
  }
  const manifest = {
    schemaVersion: 2,
    mediaType: MediaType.DockerManifest,
    config: { mediaType: MediaType.DockerConfig, size: config.length, digest: sha256(config) },
    layers: layers.map(({ blob }) => ({ mediaType: MediaType.DockerLayerGzip, size: blob.length, digest: sha256(blob) })),
  };
  const put = await fetch(`http://${host}/v2/${repository}/manifests/${tag}`, { method: 'PUT', body: JSON.stringify(manifest), headers: { 'content-type': MediaType.DockerManifest } });
  if (put.status !== 201) throw new Error(`manifest: ${put.status} ${await put.text()}`);
}

test.serial('the first layer streams into the archive; the archive is the spooled one, byte for byte, and so when the registry does no ranges', async (t) => {
  const registry = await startRegistry(t);
  const dir = await tempDir(t);
  const layers = [await fileLayer('base/noise', randomBytes(700_000)), await fileLayer('app/run', 'run\n'.repeat(3000))];
  await pushImage(testImage(layers), `docker://${registry.host}/dockvm/stream:1`, isolated);

  // Pulled first: a layer in dockvm's tar cache is read from there, not streamed.
  const spy = countStreamed(t);
  const result = await pull(`docker://${registry.host}/dockvm/stream:1`, join(dir, 'streamed.tar'), isolated);
  t.is(spy.streamed, 1);
  const expected = await spooledArchive(`docker://${registry.host}/dockvm/stream:1`, join(dir, 'spooled.tar'), `${registry.host}/dockvm/stream:1`);
  const streamed = await readFile(join(dir, 'streamed.tar'));
  t.true(streamed.equals(expected));
  t.is(result.sha256, sha256(expected).slice('sha256:'.length));

  const proxy = await startFaultProxy(t, registry.host, { noRange: true });
  process.env.DOCKVM_TAR_CACHE = 'off';
  t.teardown(() => {
    delete process.env.DOCKVM_TAR_CACHE;
  });
  const viaProxy = await pull(`docker://${proxy.host}/dockvm/stream:1`, join(dir, 'no-range.tar'), { ...isolated, finalName: `${registry.host}/dockvm/stream` });
  t.is(spy.streamed, 1, 'without ranges, nothing streams');
  t.true(proxy.requests.some((request) => request.line.startsWith('GET ') && request.line.includes('/blobs/sha256:') && request.status === 200), 'downloaded whole');
  t.true((await readFile(join(dir, 'no-range.tar'))).equals(expected));
  t.is(viaProxy.sha256, result.sha256);
});

test.serial('a multi-member gzip layer, whose trailer states only its last member: the archive is written again the spooled way, and is right', async (t) => {
  const registry = await startRegistry(t);
  const dir = await tempDir(t);
  const tar = await fileLayer('data/blocks', randomBytes(300_000));
  const half = 512 * Math.floor(tar.length / 1024);
  // Two gzip members: the trailer's size is the second one's, which is a whole number of blocks.
  const blob = Buffer.concat([gzipSync(tar.subarray(0, half)), gzipSync(tar.subarray(half))]);
  t.not(blob.readUInt32LE(blob.length - 4), tar.length);
  t.is(blob.readUInt32LE(blob.length - 4) % 512, 0);
  await putImage(registry.host, 'dockvm/members', '1', [{ blob, diffId: sha256(tar) }]);
  const ref = `docker://${registry.host}/dockvm/members:1`;

  const spy = countStreamed(t);
  const result = await pull(ref, join(dir, 'pulled.tar'), isolated);
  t.is(spy.streamed, 1, 'it was tried');
  const expected = await spooledArchive(ref, join(dir, 'spooled.tar'), `${registry.host}/dockvm/members:1`);
  t.true((await readFile(join(dir, 'pulled.tar'))).equals(expected));
  t.is(result.sha256, sha256(expected).slice('sha256:'.length));
  t.deepEqual((await readdir(dir)).sort(), ['pulled.tar', 'spooled.tar']);
});

test.serial('a wrong byte in the streamed layer: the pull fails naming the blob, and writes nothing', async (t) => {
  const registry = await startRegistry(t);
  const dir = await tempDir(t);
  const pushed = await pushImage(testImage([await fileLayer('noise', randomBytes(600_000))]), `docker://${registry.host}/dockvm/flipped:1`, isolated);
  const proxy = await startFaultProxy(t, registry.host, { flipBlob: pushed.layers[0]!.digest });
  const spy = countStreamed(t);
  const error = await t.throwsAsync(pull(`docker://${proxy.host}/dockvm/flipped:1`, join(dir, 'out.tar'), isolated), { instanceOf: DigestMismatchError });
  t.is(spy.streamed, 1);
  t.regex(error.message, new RegExp(`blob ${pushed.layers[0]!.digest}: the bytes the registry sent do not match the digest`));
  t.deepEqual(await readdir(dir), []);
});
