// Bases of many layers (issue 15) in every VM path, with real boots (TCG here): the Debian rootfs with
// 39, 99 and 127 tiny layers on top (test/fixtures/many-layers.ts: each whites out the previous one's
// file, every tenth makes a directory opaque). run-as-root sees the merged view every layer makes and
// writes the right new layer; export --engine vm writes the native engine's bytes; shell runs over the
// largest; one layer more than the build VM stacks is a one-line error before any VM starts.
// Before: QEMU's "No 'virtio-bus' bus found for device 'virtio-blk-device'" from 24 layers on.
import test from 'ava';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { openImage } from '../../src/transport/index.js';
import { readTar } from '../../src/layer/tar.js';
import { expectedView, manyLayerLayout, manyLayersRef } from '../fixtures/many-layers.js';
import { listing } from '../helpers/filesystem.js';
import { runDockvm } from '../helpers/peers.js';

/** The most layers dockvm claims to stack (MAX_LOWERS), and the counts tested up to it. */
const LIMIT = 128;
const COUNTS = [40, 100, LIMIT] as const;

const root = mkdtempSync(join(tmpdir(), 'dockvm-many-layers-test-'));
let layout: string;
test.before(async () => {
  layout = await manyLayerLayout(join(root, 'layout'), [...COUNTS, LIMIT + 1]);
});
test.after.always(() => rmSync(root, { recursive: true, force: true }));

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(root, 'case-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** What the script writes to /srv/view: the merged /opt/stack, etc/stack-depth, whether etc/motd is there. */
function expectedViewFile(n: number): string {
  const view = expectedView(n);
  return `${view.stack.map((path) => `/${path}\n`).join('')}${view.depth ?? ''}${view.motd ? 'motd' : 'no-motd'}\n`;
}

/** Records the view, then changes files of the top layer, a deep one (the opaque room) and the base. */
function script(n: number): string {
  return [
    '{ find /opt/stack | LC_ALL=C sort; cat /etc/stack-depth; if [ -e /etc/motd ]; then echo motd; else echo no-motd; fi; } > /srv/view',
    `rm /opt/stack/k-${n - 1}`,
    'echo mine > /opt/stack/k-new',
    'rm -rf /opt/stack/room && mkdir /opt/stack/room && echo fresh > /opt/stack/room/fresh',
    'echo changed > /etc/stack-depth',
    'useradd -m -u 1000 app',
  ].join('\n');
}

/** The text of some files of a tar. */
async function texts(tar: string, paths: readonly string[]): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  for await (const { entry, body } of readTar(createReadStream(tar), { source: tar })) {
    let text = '';
    for await (const chunk of body) text += String(chunk);
    if (paths.includes(entry.path)) found.set(entry.path, text);
  }
  return found;
}

for (const n of COUNTS) {
  test.serial(`run-as-root over ${n} layers: the script sees every layer's whiteouts and opaque dirs; its changes are one right layer`, async (t) => {
    const dir = tempDir(t);
    const spec = join(dir, 'spec.json');
    writeFileSync(spec, JSON.stringify({ name: 'localhost/dockvm-test/many-layers', tag: String(n), fromImage: manyLayersRef(layout, n), runAsRoot: script(n), output: 'image.tar' }));
    const run = await runDockvm(['run-as-root', spec, '--json']);
    t.is(run.exitCode, 0, run.stderr);
    t.is((JSON.parse(run.stdout) as { layers: unknown[] }).layers.length, n + 1);

    const image = await openImage(join(dir, 'image.tar'));
    const layerTar = join(dir, 'layer.tar');
    try {
      await pipeline(await image.layers.at(-1)!.openTar(), (await import('node:fs')).createWriteStream(layerTar));
    } finally {
      await image.close();
    }
    const files = await texts(layerTar, ['srv/view', 'etc/stack-depth', 'opt/stack/k-new', 'opt/stack/room/fresh']);
    t.is(files.get('srv/view'), expectedViewFile(n), 'the merged view inside the VM');
    t.is(files.get('etc/stack-depth'), 'changed\n');
    t.is(files.get('opt/stack/room/fresh'), 'fresh\n');

    const layer = await listing(layerTar);
    // the top layer's file deleted, a new one, and the room (opaque in every tenth layer) replaced: marker first
    t.deepEqual([...layer.keys()].filter((path) => path === 'opt' || path.startsWith('opt/')), [
      'opt',
      'opt/stack',
      `opt/stack/.wh.k-${n - 1}`,
      'opt/stack/k-new',
      'opt/stack/room',
      'opt/stack/room/.wh..wh..opq',
      'opt/stack/room/fresh',
    ]);
    t.like(layer.get('home/app'), { type: 'directory', uid: 1000, gid: 1000 });
    t.false([...layer.values()].some((e) => e.type === 'character-device'), 'no overlay whiteout devices');
    t.false([...layer.values()].some((e) => Object.keys(e.xattrs ?? {}).some((x) => x.startsWith('trusted.overlay.'))), 'no overlay xattrs');
  });
}

test.serial(`export --engine vm over ${LIMIT} layers writes the bytes of the native engine`, async (t) => {
  const dir = tempDir(t);
  const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');
  const vm = await runDockvm(['export', manyLayersRef(layout, LIMIT), '-o', join(dir, 'vm.tar'), '--engine', 'vm']);
  t.is(vm.exitCode, 0, vm.stderr);
  const native = await runDockvm(['export', manyLayersRef(layout, LIMIT), '-o', join(dir, 'native.tar')]);
  t.is(native.exitCode, 0, native.stderr);
  t.is(sha(join(dir, 'vm.tar')), sha(join(dir, 'native.tar')));
  // ...and that is the merged view, not two empty tars
  const entries = await listing(join(dir, 'vm.tar'));
  const { stack } = expectedView(LIMIT);
  t.deepEqual([...entries.keys()].filter((path) => path.startsWith('opt/stack')), stack);
  t.false(entries.has('etc/motd'));
  t.true(entries.has('usr/bin/bash'));
});

test.serial(`shell over ${LIMIT} layers runs a command in their merged view`, async (t) => {
  const run = await runDockvm(['shell', manyLayersRef(layout, LIMIT), '--', 'sh', '-c', 'cat /etc/stack-depth; ls /opt/stack/room | head -n 2; id -u']);
  t.is(run.exitCode, 0, run.stderr);
  t.is(run.stdout, `${LIMIT - 1}\nfrom-120\nr-121\n0\n`);
});

test.serial(`${LIMIT + 1} layers: run-as-root, export --engine vm and shell refuse in one line, before any VM or layer conversion`, async (t) => {
  const dir = tempDir(t);
  // A QEMU that leaves a mark if anything tries to run it, and an empty cache where converted layers would go.
  const marker = join(dir, 'qemu-ran');
  const qemu = join(dir, 'qemu');
  writeFileSync(qemu, `#!/bin/sh\ntouch '${marker}'\nexit 1\n`);
  chmodSync(qemu, 0o755);
  const cache = join(dir, 'cache');
  const env = { DOCKVM_QEMU: qemu, DOCKVM_CACHE: cache, DOCKVM_ACCEL: 'tcg' };
  const reference = manyLayersRef(layout, LIMIT + 1);
  const spec = join(dir, 'spec.json');
  writeFileSync(spec, JSON.stringify({ name: 'too-many', fromImage: reference, runAsRoot: 'true', output: 'out.tar' }));

  const tooMany = new RegExp(`^dockvm: .*has ${LIMIT + 1} layers; the build VM stacks at most ${LIMIT} .*\\n$`);
  for (const args of [['run-as-root', spec], ['export', reference, '-o', join(dir, 'export.tar'), '--engine', 'vm'], ['shell', reference, '--', 'true']]) {
    const run = await runDockvm(args, { env });
    t.is(run.exitCode, 2, `${args[0]}: ${run.stderr}`);
    t.regex(run.stderr, tooMany, args[0]);
  }
  t.regex((await runDockvm(['export', reference, '-o', join(dir, 'export.tar'), '--engine', 'vm'], { env })).stderr, /use --engine native/);
  t.false(existsSync(marker), 'QEMU never ran');
  t.false(existsSync(join(cache, 'layers')) && readdirSync(join(cache, 'layers')).length > 0, 'no layer was converted');
  t.false(existsSync(join(dir, 'out.tar')) || existsSync(join(dir, 'export.tar')), 'no output');
  // what the export error suggests works
  const native = await runDockvm(['export', reference, '-o', join(dir, 'export.tar')], { env });
  t.is(native.exitCode, 0, native.stderr);
});
