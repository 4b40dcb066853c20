// Layer tars from registries are kept in dockvm's cache by diff_id: a second open of an image with the
// same layers downloads none of them (the registry is not even asked), reads the same bytes, and a
// pull writes the same archive from them. DOCKVM_TAR_CACHE=off downloads every time. (Serial: the switch is
// an environment variable.)
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pull } from '../../src/cli/pull.js';
import { hex } from '../../src/image/digest.js';
import { openRegistryImage, pushImage } from '../../src/transport/registry/index.js';
import { cacheDir } from '../../src/cache-dir.js';
import { startFaultProxy, startRegistry } from '../helpers/registry.js';
import { runDockvm } from '../helpers/peers.js';
import { collect } from '../helpers/streams.js';
import { tempDir } from '../transport/archives.js';
import { fileLayer, testImage } from './images.js';

const isolated = { authFiles: [] as string[] };
const blobGets = (requests: { line: string }[]) => requests.filter((request) => /^GET \S*\/blobs\/sha256:/.test(request.line)).length;

test.serial('a tar in the cache is not downloaded again; with DOCKVM_TAR_CACHE=off it is', async (t) => {
  const registry = await startRegistry(t);
  const dir = await tempDir(t);
  const layers = [await fileLayer('noise', randomBytes(300_000)), await fileLayer('more', randomBytes(1000))];
  const image = testImage(layers);
  await pushImage(image, `docker://${registry.host}/dockvm/cached:1`, isolated);
  const proxy = await startFaultProxy(t, registry.host);
  const ref = `docker://${proxy.host}/dockvm/cached:1`;

  const first = await openRegistryImage(ref, { ...isolated, keepBlobs: false });
  t.teardown(() => first.close());
  await first.fetchLayers();
  t.is(blobGets(proxy.requests), 3, 'the config and two layers');
  for (const layer of image.layers) t.true((await readdir(join(cacheDir(), 'tars'))).includes(`${hex(layer.diffId)}.tar`));

  const second = await openRegistryImage(ref, { ...isolated, keepBlobs: false });
  t.teardown(() => second.close());
  await second.fetchLayers();
  for (const [i, layer] of second.layers.entries()) t.deepEqual(await collect(await layer.openTar()), layers[i]);
  t.is(blobGets(proxy.requests), 4, 'the config only');

  // A pull reads cached tars too (it streams only a layer it has to download).
  const cached = await pull(ref, join(dir, 'cached.tar'), isolated);
  t.is(blobGets(proxy.requests), 5, 'the config only');

  process.env.DOCKVM_TAR_CACHE = 'off';
  t.teardown(() => {
    delete process.env.DOCKVM_TAR_CACHE;
  });
  const downloaded = await pull(ref, join(dir, 'downloaded.tar'), isolated);
  t.is(blobGets(proxy.requests), 9, 'the config, the first layer\'s last bytes (Range), and both layers');
  t.is(downloaded.sha256, cached.sha256);
  t.deepEqual(await readFile(join(dir, 'downloaded.tar')), await readFile(join(dir, 'cached.tar')));

  // A cached tar damaged on disk: another process checks it before use, drops it and downloads again.
  delete process.env.DOCKVM_TAR_CACHE;
  const damaged = join(cacheDir(), 'tars', `${hex(image.layers[0]!.diffId)}.tar`);
  const bytes = await readFile(damaged);
  bytes[bytes.length >> 1]! ^= 0xff;
  await writeFile(damaged, bytes);
  const before = blobGets(proxy.requests);
  const run = await runDockvm(['pull', `${proxy.host}/dockvm/cached:1`, '-o', join(dir, 'after-damage.tar')], { env: { REGISTRY_AUTH_FILE: join(dir, 'none.json') } });
  t.is(run.exitCode, 0, run.stderr);
  t.true(blobGets(proxy.requests) > before + 1, 'the damaged layer was downloaded again');
  t.deepEqual(await readFile(join(dir, 'after-damage.tar')), await readFile(join(dir, 'cached.tar')));
});
