// A registry behind a proxy that misbehaves: a flipped byte in a blob is caught by its digest, a
// connection dropped mid-blob is resumed with a Range request, 503s are retried; uploads that are refused
// or cut start over; a source layer that fails its diff_id stops the push before any manifest.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { DigestMismatchError } from '../../src/errors.js';
import { openRegistryImage, pushImage } from '../../src/transport/registry/index.js';
import { startFaultProxy, startRegistry } from '../helpers/registry.js';
import { collect } from '../helpers/streams.js';
import { fileLayer, testImage } from './images.js';
import { writeDockerArchive } from '../fixtures/assemble.js';
import { runDockvm } from '../helpers/peers.js';
import { tempDir } from '../transport/archives.js';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('../../bin/dockvm.js', import.meta.url));

const fast = { authFiles: [] as string[], retry: { attempts: 4, backoffMs: 10 } };

/** A layer that gzips to about 600 KB: noise does not compress. */
function bigLayer(): Promise<Buffer> {
  return fileLayer('noise', randomBytes(600_000));
}

test('a blob whose bytes do not match its digest: a DigestMismatchError naming the blob', async (t) => {
  const registry = await startRegistry(t);
  const pushed = await pushImage(testImage([await bigLayer()]), `docker://${registry.host}/dockvm/flip:1`, fast);
  const proxy = await startFaultProxy(t, registry.host, { flipBlob: pushed.layers[0]!.digest });
  const image = await openRegistryImage(`docker://${proxy.host}/dockvm/flip:1`, fast);
  t.teardown(() => image.close());
  const error = await t.throwsAsync(image.fetchLayers(), { instanceOf: DigestMismatchError });
  t.regex(error.message, new RegExp(`^${proxy.host}/dockvm/flip: blob ${pushed.layers[0]!.digest}: the bytes the registry sent do not match the digest: got sha256:[0-9a-f]{64}$`));
  // Opening the layer tries again, and fails the same way: nothing unverified is ever handed out.
  await t.throwsAsync(image.layers[0]!.openTar(), { instanceOf: DigestMismatchError });
});

test('a connection dropped mid-blob is resumed from where it stopped (Range), and the result verified', async (t) => {
  const registry = await startRegistry(t);
  const layer = await bigLayer();
  const pushed = await pushImage(testImage([layer]), `docker://${registry.host}/dockvm/drop:1`, fast);
  t.true(pushed.layers[0]!.size > 300_000);
  const proxy = await startFaultProxy(t, registry.host, { dropBlobAfter: 100_000, dropTimes: 2 });
  const image = await openRegistryImage(`docker://${proxy.host}/dockvm/drop:1`, fast);
  t.teardown(() => image.close());
  await image.fetchLayers();
  t.deepEqual(await collect(await image.layers[0]!.openTar()), layer);
  const blobRequests = proxy.requests.filter((request) => request.line.includes(`/blobs/${pushed.layers[0]!.digest}`));
  t.is(blobRequests.length, 3);
  t.is(blobRequests[0]!.range, undefined);
  // Each attempt resumes after what arrived before the cut (the proxy cuts 100000 bytes into each response).
  const starts = blobRequests.slice(1).map((request) => Number(/^bytes=(\d+)-$/.exec(request.range ?? '')?.[1]));
  t.true(starts[0]! > 0 && starts[0]! <= 100_000, String(starts));
  t.true(starts[1]! > starts[0]! && starts[1]! <= starts[0]! + 100_000, String(starts));
  t.deepEqual(blobRequests.map((request) => request.status), [200, 206, 206]);
});

test('503s are retried with backoff; a registry that keeps failing is an error after the last attempt', async (t) => {
  const registry = await startRegistry(t);
  const layer = await bigLayer();
  await pushImage(testImage([layer]), `docker://${registry.host}/dockvm/busy:1`, fast);
  const proxy = await startFaultProxy(t, registry.host);
  // waits of 100, 200, 400 ms: long enough to tell from the time a request takes here
  const policy = { authFiles: [] as string[], retry: { attempts: 4, backoffMs: 100 } };
  const blobGets = (from: number) => proxy.requests.slice(from).filter((request) => /^GET \S*\/blobs\/sha256:/.test(request.line));
  /** The gaps between successive requests: each at least the wait before it (a busy host only adds). */
  const gaps = (requests: { at: number }[]) => requests.slice(1).map((request, i) => request.at - requests[i]!.at);
  const image = await openRegistryImage(`docker://${proxy.host}/dockvm/busy:1`, policy);
  t.teardown(() => image.close());
  // the layer's GETs (the config came with the image)
  proxy.faults.unavailableTimes = 2;
  const opened = proxy.requests.length;
  t.deepEqual(await collect(await image.layers[0]!.openTar()), layer);
  const first = blobGets(opened);
  t.deepEqual(first.map((request) => request.status), [503, 503, 200]);
  const [wait1, wait2] = gaps(first);
  t.true(wait1! >= 100 && wait2! >= 200, `waited ${gaps(first).map((ms) => ms.toFixed(0)).join(', ')} ms`);

  const again = await openRegistryImage(`docker://${proxy.host}/dockvm/busy:1`, policy);
  t.teardown(() => again.close());
  proxy.faults.unavailableTimes = 100;
  const before = proxy.requests.length;
  const error = await t.throwsAsync(again.fetchLayers());
  t.regex(error.message, /dockvm\/busy: blob sha256:[0-9a-f]{64}: 503 Service Unavailable \(UNAVAILABLE: test proxy says 503\)$/);
  const failed = blobGets(before);
  t.deepEqual(failed.map((request) => request.status), [503, 503, 503, 503], 'four attempts, then no more');
  const waits = gaps(failed);
  t.true(waits[0]! >= 100 && waits[1]! >= 200 && waits[2]! >= 400, `waited ${waits.map((ms) => ms.toFixed(0)).join(', ')} ms`);
});

/** The pids of this process's igzip children still running (a gzip left behind by a failed upload). */
async function igzipChildren(): Promise<string[]> {
  const { stdout } = await execa('pgrep', ['-P', String(process.pid), '-x', 'igzip'], { reject: false });
  return stdout.split('\n').filter(Boolean);
}

test('uploads: a 503 and a connection dropped mid-upload start over from a new session; the pushed image is whole', async (t) => {
  const registry = await startRegistry(t);
  const proxy = await startFaultProxy(t, registry.host, { uploadUnavailableTimes: 1, dropUploadAfter: 200_000, dropUploadTimes: 1 });
  const layer = await bigLayer();
  const pushed = await pushImage(testImage([layer]), `docker://${proxy.host}/dockvm/upload:1`, fast);
  t.is(pushed.layers[0]!.status, 'uploaded');
  const uploads = proxy.requests.filter((request) => /^(PATCH|PUT) \S*\/blobs\/uploads\//.test(request.line));
  t.true(uploads.some((request) => request.status === 503), JSON.stringify(uploads));
  t.true(uploads.some((request) => request.status === 0), JSON.stringify(uploads));
  // Read back from the registry itself: what it stored is the layer, under the digest the push reported.
  const image = await openRegistryImage(`docker://${registry.host}/dockvm/upload:1`, fast);
  t.teardown(() => image.close());
  t.is(image.manifest.digest, pushed.digest);
  t.deepEqual(await collect(await image.layers[0]!.openTar()), layer);
  t.deepEqual(await igzipChildren(), []);
});

test('a layer whose bytes do not match its diff_id: the push fails naming it, and the registry gets no manifest', async (t) => {
  const registry = await startRegistry(t);
  const dir = await tempDir(t);
  const layer = await bigLayer();
  const archive = join(dir, 'bad.tar');
  await writeDockerArchive(archive, [{ repoTag: 'bad:1', layers: [layer] }]);
  // Flip one byte inside the layer's file data, past its tar header.
  const bytes = await readFile(archive);
  const at = bytes.indexOf(layer.subarray(2048, 2048 + 64));
  t.true(at > 0);
  bytes[at + 10]! ^= 0xff;
  await writeFile(archive, bytes);
  const run = await runDockvm(['push', 'bad.tar', `${registry.host}/dockvm/bad:1`], { cwd: dir, env: { REGISTRY_AUTH_FILE: join(dir, 'none.json') } });
  t.is(run.exitCode, 1);
  t.regex(run.stderr, /^dockvm: [^\n]*bad\.tar: layer [^\n]*: content does not match its digest: expected sha256:[0-9a-f]{64}, got sha256:[0-9a-f]{64}\n$/);
  const manifest = await fetch(`http://${registry.host}/v2/dockvm/bad/manifests/1`);
  t.is(manifest.status, 404);
  const tags = await fetch(`http://${registry.host}/v2/dockvm/bad/tags/list`);
  t.is(tags.status, 404);
});

test('dockvm push whose upload is cut mid-way: retried, and the process exits (no compressor left waiting)', async (t) => {
  const registry = await startRegistry(t);
  const proxy = await startFaultProxy(t, registry.host, { dropUploadAfter: 300_000, dropUploadTimes: 1 });
  const dir = await tempDir(t);
  await writeDockerArchive(join(dir, 'noise.tar'), [{ repoTag: 'noise:1', layers: [await fileLayer('noise', randomBytes(24_000_000))] }]);
  const run = await execa('node', [CLI, 'push', 'noise.tar', `${proxy.host}/dockvm/cut:1`], { cwd: dir, env: { REGISTRY_AUTH_FILE: join(dir, 'none.json') }, reject: false, timeout: 60_000 });
  t.false(run.timedOut, 'the push exited');
  t.is(run.exitCode, 0, String(run.stderr));
  t.true(proxy.requests.some((request) => request.status === 0), 'an upload was cut');
  t.regex(String(run.stdout), /^sha256:[0-9a-f]{64}\n?$/);
});
