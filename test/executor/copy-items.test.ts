// COPY --from's selection in another image's merged filesystem (no VM): Docker's rules as the context's
// selection has them, symlinks followed inside the image (an absolute link from the image's root), a
// whiteout hiding a lower file, hard links kept as one group, wildcards, a missing source named.
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { copyItems, copyLayout, type CopyItem } from '../../src/executor/copy-items.js';
import { ImageTree } from '../../src/executor/image-tree.js';
import type { CopyStep } from '../../src/plan/plan.js';
import { layerTar } from '../fixtures/assemble.js';
import { memoryImage } from '../helpers/memory-image.js';

const spool = mkdtempSync(join(tmpdir(), 'dockvm-copy-items-'));
test.after.always(() => rmSync(spool, { recursive: true, force: true }));

async function tree(): Promise<ImageTree> {
  const bottom = await layerTar([
    { path: 'opt', type: 'directory', mode: 0o755 },
    { path: 'opt/app', type: 'directory', mode: 0o750, uid: 7, gid: 8 },
    { path: 'opt/app/run.sh', mode: 0o755, uid: 7, gid: 8, content: '#!/bin/sh\n' },
    { path: 'opt/app/data.txt', mode: 0o640, content: 'data\n' },
    { path: 'opt/app/data-link', type: 'link', mode: 0o640, linkname: 'opt/app/data.txt' },
    { path: 'opt/app/gone.txt', mode: 0o644, content: 'deleted above\n' },
    { path: 'opt/current', type: 'symlink', linkname: '/opt/app' },
    { path: 'etc', type: 'directory', mode: 0o755 },
    { path: 'etc/a.conf', mode: 0o644, content: 'a\n' },
    { path: 'etc/b.conf', mode: 0o644, content: 'b\n' },
    { path: 'etc/c.txt', mode: 0o644, content: 'c\n' },
  ]);
  const top = await layerTar([
    { path: 'opt', type: 'directory', mode: 0o755 },
    { path: 'opt/app', type: 'directory', mode: 0o750, uid: 7, gid: 8 },
    { path: 'opt/app/.wh.gone.txt', mode: 0o644 },
  ]);
  const image = memoryImage([bottom, top]);
  const opened = await ImageTree.open(image, 'test image', spool);
  return opened;
}

function step(patterns: string[], dest: string, destIsDir = dest.endsWith('/')): CopyStep {
  return {
    kind: 'copy', instruction: 'COPY', from: { kind: 'stage', stage: 0 }, patterns, entries: [], inlineFiles: [], urls: [], dest, destIsDir, link: false, unpack: false,
    location: { file: 'Containerfile', line: 3 }, createdBy: null, emptyLayer: false, cacheText: 'COPY',
  };
}

async function select(t: ImageTree, s: CopyStep) {
  const sources = { contextDir: '/nonexistent', tree: t, downloads: [] };
  const layout = await copyLayout(s, sources);
  const items: (Omit<CopyItem, 'content'> & { data?: string })[] = [];
  for await (const item of copyItems(s, sources, layout)) {
    const { content, ...rest } = item;
    const body = content ? await content() : undefined;
    items.push(Buffer.isBuffer(body) ? { ...rest, data: body.toString() } : body ? { ...rest, data: await text(body) } : rest);
  }
  return { layout, items };
}

async function text(stream: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString();
}

test('a directory through an absolute symlink: its contents with owners and modes, hard links kept, whiteouts applied', async (t) => {
  const image = await tree();
  t.teardown(() => image.close());
  const { layout, items } = await select(image, step(['/opt/current/'], '/srv/'));
  t.deepEqual(layout, { rootMetadata: true });
  t.deepEqual(
    items.map(({ target, entry, data }) => [target, entry.type, entry.mode.toString(8), `${entry.uid}:${entry.gid}`, entry.linkname ?? data ?? '']),
    [
      ['', 'directory', '750', '7:8', ''],
      ['data-link', 'file', '640', '0:0', 'data\n'],
      ['data.txt', 'link', '640', '0:0', 'data-link'],
      ['run.sh', 'file', '755', '7:8', '#!/bin/sh\n'],
    ],
  );
});

test('one file to a destination that is not a directory: the file may take the destination\'s name', async (t) => {
  const image = await tree();
  t.teardown(() => image.close());
  const { layout, items } = await select(image, step(['/opt/app/run.sh'], '/usr/bin/start'));
  t.deepEqual(layout, { single: 'run.sh', rootMetadata: false });
  t.deepEqual(items.map((i) => i.target), ['run.sh']);
});

test('a wildcard picks the names it matches, into the destination directory', async (t) => {
  const image = await tree();
  t.teardown(() => image.close());
  const { layout, items } = await select(image, step(['/etc/*.conf'], '/conf/'));
  t.deepEqual(layout, { rootMetadata: false });
  t.deepEqual(items.map((i) => [i.target, i.data]), [['a.conf', 'a\n'], ['b.conf', 'b\n']]);
});

test('a source the image does not have, or that a whiteout deleted, is an error naming it', async (t) => {
  const image = await tree();
  t.teardown(() => image.close());
  await t.throwsAsync(select(image, step(['/opt/app/gone.txt'], '/x')), { message: /COPY --from \(stage 0\): "\/opt\/app\/gone\.txt" not found/ });
  await t.throwsAsync(select(image, step(['/nope'], '/x')), { message: /"\/nope" not found/ });
});
