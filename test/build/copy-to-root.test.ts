import test from 'ava';
import { linkSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { copyToRootTar } from '../../src/build/copy-to-root.js';
import { readTar, type TarEntry } from '../../src/layer/tar.js';
import { SpecError } from '../../src/errors.js';
import { layerTar } from '../fixtures/assemble.js';
import { collect } from '../helpers/streams.js';

async function entriesOf(sources: string[], keepContentsDirlinks: boolean): Promise<Map<string, [TarEntry, string]>> {
  const result = new Map<string, [TarEntry, string]>();
  for await (const { entry, body } of readTar(copyToRootTar(sources, { uid: 1000, gid: 100, keepContentsDirlinks }), { source: 't' })) {
    result.set(entry.path, [entry, (await collect(body)).toString()]);
  }
  return result;
}

test('directories and tarballs become one tar owned by uid/gid; dirlinks follow keepContentsDirlinks', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-copy-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const root = join(dir, 'root');
  mkdirSync(join(root, 'usr/share/doc'), { recursive: true });
  writeFileSync(join(root, 'usr/share/doc/README'), 'read me\n');
  chmodSync(join(root, 'usr/share/doc/README'), 0o640);
  linkSync(join(root, 'usr/share/doc/README'), join(root, 'usr/share/doc/README.hard'));
  symlinkSync('usr/share', join(root, 'share')); // a symlink to a directory
  writeFileSync(Buffer.from(`${root}/caf\xe9`, 'latin1'), 'latin1 name');
  const tarball = join(dir, 'extra.tar.gz');
  writeFileSync(tarball, gzipSync(await layerTar([{ path: 'etc', type: 'directory' }, { path: 'etc/motd', content: 'from tarball', uid: 5 }])));

  const followed = await entriesOf([root, tarball], false);
  t.deepEqual([...followed.keys()].slice(0, 3), ['caf\xe9', 'share', 'share/doc']);
  t.like(followed.get('share')![0], { type: 'directory', uid: 1000, gid: 100 });
  // "share" sorts before "usr", so the followed symlink holds the content and the rest link to it
  t.deepEqual(followed.get('share/doc/README'), [{ path: 'share/doc/README', type: 'file', mode: 0o640, size: 8, uid: 1000, gid: 100, mtime: followed.get('share/doc/README')![0].mtime }, 'read me\n']);
  t.like(followed.get('usr/share/doc/README')![0], { type: 'link', linkname: 'share/doc/README' });
  t.like(followed.get('usr/share/doc/README.hard')![0], { type: 'link', linkname: 'share/doc/README' });
  t.deepEqual(followed.get('etc/motd')!.slice(1), ['from tarball']);
  t.like(followed.get('etc/motd')![0], { uid: 1000, gid: 100 });
  t.false(followed.has(''), 'the source directory itself is not an entry');

  const kept = await entriesOf([root], true);
  t.like(kept.get('share')![0], { type: 'symlink', linkname: 'usr/share' });
  t.false(kept.has('share/doc'));
});

test('a missing source names copyToRoot and the path', async (t) => {
  await t.throwsAsync(entriesOf(['/nonexistent/dockvm'], false), { instanceOf: SpecError, message: /copyToRoot: cannot read \/nonexistent\/dockvm: ENOENT/ });
});
