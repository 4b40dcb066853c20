// Mutated archives (byte flips, truncations, insertions) must give either an image whose layers all read
// back, or a DockvmError: never a TypeError, a hang or an unhandled rejection.
import test from 'ava';
import fc from 'fast-check';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openImages } from '../../src/transport/index.js';
import { DockvmError } from '../../src/errors.js';
import { drain } from '../../src/transport/streams.js';
import { configFor, gzip, sampleLayers, sha, tarOf, tempDir } from './archives.js';
import { HANG_DEADLINE_MS } from '../helpers/wait.js';

const RUNS = 1200;
// Against hangs only (a case takes milliseconds): generous, so that a busy host does not trip it.
const CASE_TIMEOUT_MS = HANG_DEADLINE_MS;

async function sources(): Promise<Buffer[]> {
  const { base, app } = await sampleLayers();
  const config = configFor([base, app]);
  const docker = await tarOf([
    { path: `${sha(config)}.json`, data: config },
    { path: 'l1/layer.tar', data: base },
    { path: 'l2/layer.tar', data: gzip(app) },
    { path: 'manifest.json', data: JSON.stringify([{ Config: `${sha(config)}.json`, RepoTags: ['fuzz:1'], Layers: ['l1/layer.tar', 'l2/layer.tar'] }]) },
  ]);
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${sha(config)}`, size: config.length },
    layers: [
      { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: `sha256:${sha(base)}`, size: base.length },
      { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: `sha256:${sha(gzip(app))}`, size: gzip(app).length },
    ],
  }));
  const oci = await tarOf([
    { path: 'oci-layout', data: '{"imageLayoutVersion":"1.0.0"}' },
    { path: 'index.json', data: JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${sha(manifest)}`, size: manifest.length }] }) },
    ...[base, gzip(app), config, manifest].map((blob) => ({ path: `blobs/sha256/${sha(blob)}`, data: blob })),
  ]);
  return [docker, gzip(docker), oci];
}

type Mutation = { kind: 'flip'; at: number; mask: number } | { kind: 'truncate'; at: number } | { kind: 'insert'; at: number; bytes: Uint8Array };

const mutation = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), mask: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 600 }) }),
);

function mutate(data: Buffer, mutations: Mutation[]): Buffer {
  let out = Buffer.from(data);
  for (const m of mutations) {
    const at = m.at % (out.length + 1);
    if (m.kind === 'flip' && at < out.length) out[at] = out[at]! ^ m.mask;
    else if (m.kind === 'truncate') out = out.subarray(0, at);
    else if (m.kind === 'insert') out = Buffer.concat([out.subarray(0, at), m.bytes, out.subarray(at)]);
  }
  return out;
}

/** Open every image and read every layer, its tar and its blob, to the end. */
async function readEverything(reference: string): Promise<void> {
  const { images, close } = await openImages(reference);
  try {
    for (const image of images) {
      for (const layer of image.layers) {
        await layer.blob();
        await drain(await layer.openTar());
        await drain(await layer.openBlob());
      }
    }
  } finally {
    await close();
  }
}

test(`${RUNS} mutated archives: an image or a DockvmError, nothing else`, async (t) => {
  const dir = await tempDir(t);
  const bases = await sources();
  const outcomes = { ok: 0, errors: new Map<string, number>() };
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => unhandled.push(reason);
  process.on('unhandledRejection', onUnhandled);
  t.teardown(() => process.off('unhandledRejection', onUnhandled));
  let n = 0;
  await fc.assert(
    fc.asyncProperty(fc.nat({ max: bases.length - 1 }), fc.array(mutation, { minLength: 1, maxLength: 3 }), async (which, mutations) => {
      const path = join(dir, `case-${n++}.tar`);
      await writeFile(path, mutate(bases[which]!, mutations));
      const reference = which === 2 ? `oci-archive:${path}` : path;
      let timer: NodeJS.Timeout | undefined;
      const hang = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`hung for ${CASE_TIMEOUT_MS} ms`)), CASE_TIMEOUT_MS);
      });
      try {
        await Promise.race([readEverything(reference), hang]);
        outcomes.ok++;
      } catch (err) {
        if (!(err instanceof DockvmError)) throw err;
        outcomes.errors.set(err.name, (outcomes.errors.get(err.name) ?? 0) + 1);
      } finally {
        clearTimeout(timer);
      }
    }),
    { numRuns: RUNS },
  );
  t.deepEqual(unhandled, []);
  t.log(`read fine: ${outcomes.ok}; errors: ${[...outcomes.errors].map(([name, count]) => `${name} ${count}`).join(', ')}`);
  // The mutations must mostly break something, or the property tests little.
  t.true(outcomes.errors.size >= 3);
});
