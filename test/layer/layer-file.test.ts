import test from 'ava';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { writeLayerFile } from '../../src/layer/layer-file.js';
import { comparePaths } from '../../src/layer/path-order.js';
import { fromOverlayUpperEntry } from '../../src/layer/overlay.js';
import { readTar, type TarEntry } from '../../src/layer/tar.js';
import { sha256 } from '../../src/image/digest.js';
import { UnsafeTarEntryError, TarFormatError } from '../../src/errors.js';
import { layerTar } from '../fixtures/assemble.js';
import { collect } from '../helpers/streams.js';

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-layerfile-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function read(path: string): Promise<[TarEntry, string][]> {
  const out: [TarEntry, string][] = [];
  for await (const { entry, body } of readTar(Readable.from([readFileSync(path)]), { source: path })) out.push([entry, (await collect(body)).toString()]);
  return out;
}

test('paths sort component by component, an opaque marker first among its siblings', (t) => {
  const paths = ['d-x', 'd/a', 'd', 'd/.wh..wh..opq', 'd/-', 'c/z', 'd/.a'];
  t.deepEqual(paths.sort(comparePaths), ['c/z', 'd', 'd/.wh..wh..opq', 'd/-', 'd/.a', 'd/a', 'd-x']);
});

test('an upper tar becomes a sorted, clamped layer; hard links point backwards; whiteouts in OCI form', async (t) => {
  const dir = tempDir(t);
  const input = join(dir, 'upper.tar');
  writeFileSync(
    input,
    await layerTar([
      { path: '.', type: 'directory' },
      { path: 'z', type: 'directory', mtime: 2_000_000_000 },
      { path: 'z/file', content: 'shared', mode: 0o4755, mtime: 50, uname: 'root' },
      { path: 'a', type: 'directory' },
      { path: 'a/link', type: 'link', linkname: 'z/file' },
      { path: 'a/gone', type: 'character-device', mode: 0, devmajor: 0, devminor: 0 },
      { path: 'etc', type: 'directory', xattrs: { 'trusted.overlay.opaque': Buffer.from('y') } },
      { path: 'etc/only', content: 'new' },
    ]),
  );
  const convert = (entry: TarEntry) => fromOverlayUpperEntry(entry, (path) => path === 'etc');
  const first = await writeLayerFile(input, join(dir, 'one.tar'), { source: 'guest output', convert, clampMtime: 1000 });
  const again = await writeLayerFile(input, join(dir, 'two.tar'), { source: 'guest output', convert, clampMtime: 1000 });
  t.deepEqual(readFileSync(join(dir, 'one.tar')), readFileSync(join(dir, 'two.tar')), 'byte-identical');
  t.is(first.diffId, sha256(readFileSync(join(dir, 'one.tar'))));
  t.is(again.diffId, first.diffId);

  const entries = await read(join(dir, 'one.tar'));
  t.deepEqual(
    entries.map(([e]) => e.path),
    ['a', 'a/.wh.gone', 'a/link', 'etc', 'etc/.wh..wh..opq', 'etc/only', 'z', 'z/file'],
  );
  const byPath = new Map(entries.map(([e, c]) => [e.path, [e, c] as const]));
  t.like(byPath.get('a/link')![0], { type: 'file', mode: 0o4755, size: 6, mtime: 50 });
  t.is(byPath.get('a/link')![1], 'shared');
  t.like(byPath.get('z/file')![0], { type: 'link', linkname: 'a/link' });
  t.is(byPath.get('z')![0].mtime, 1000, 'mtime clamped');
  t.is(byPath.get('a/link')![0].uname, undefined, 'numeric owners only');
  t.is(byPath.get('etc')![0].xattrs, undefined, 'no overlay xattrs');
});

test('an entry under a symlink, or a dangling hard link, is refused', async (t) => {
  const dir = tempDir(t);
  const through = join(dir, 'through.tar');
  writeFileSync(through, await layerTar([{ path: 'a', type: 'symlink', linkname: '/etc' }, { path: 'a/passwd', content: 'x' }]));
  await t.throwsAsync(writeLayerFile(through, join(dir, 'o.tar'), { source: 'guest output' }), {
    instanceOf: UnsafeTarEntryError,
    message: 'guest output: entry "a/passwd" lies under "a", which is a symlink, not a directory',
  });
  const dangling = join(dir, 'dangling.tar');
  writeFileSync(dangling, await layerTar([{ path: 'l', type: 'link', linkname: 'missing' }]));
  await t.throwsAsync(writeLayerFile(dangling, join(dir, 'o.tar'), { source: 'guest output' }), { instanceOf: TarFormatError, message: /hard link "l" points to "missing", which the layer does not hold/ });
});
