// dockvm export --engine vm against the native engine: the same bytes for every fixture image, with
// real boots of the build VM (one per image; TCG here). Besides the fixtures, two small images made
// here hold what the fixtures lack and the merged view gets wrong unless the host corrects it:
// directories a layer only implies, an opaque marker without its directory, a root opaque marker (only
// the layers above it are mounted, which also exercises a single lower), a symlink whose header says
// 0755, overlay bookkeeping xattrs in a layer, device numbers beyond 8 bits.
import test from 'ava';
import { createHash } from 'node:crypto';
import { createWriteStream, existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exportInVm } from '../../src/build/export-vm.js';
import { writeFlattened } from '../../src/flatten/flatten.js';
import { openImage } from '../../src/transport/index.js';
import { layerTar, writeDockerArchive } from '../fixtures/assemble.js';
import { debianFixture } from '../fixtures/debian.js';
import { UNDECLARED_DIRS, writeEdgeArchive, writeThroughSymlinkArchive } from '../fixtures/edge-images.js';
import { listing } from '../helpers/filesystem.js';
import { runDockvm } from '../helpers/peers.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-export-vm-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The CLI runs dist/: refuse a dist older than the sources this file tests through it. */
function assertBuilt(): void {
  for (const source of ['src/cli/export.ts', 'src/build/export-vm.ts', 'src/flatten/emit.ts', 'vm/build/guest.sh']) {
    const built = source.startsWith('vm/') ? source : join('dist', source.replace(/\.ts$/, '.js'));
    if (!existsSync(join(REPO, built)) || statSync(join(REPO, built)).mtimeMs < statSync(join(REPO, source)).mtimeMs) {
      throw new Error(`dist/ is older than ${source}: run \`npm run build\` before this test`);
    }
  }
}

/** Both engines on one image, through the library: the VM engine's tar and the native one's. */
async function bothEngines(dir: string, archive: string, mtime?: number): Promise<{ vm: string; native: string; entries: number }> {
  const image = await openImage(archive);
  try {
    const vm = join(dir, 'vm.tar');
    const result = await exportInVm(image, vm, mtime === undefined ? {} : { mtime });
    const native = join(dir, 'native.tar');
    const file = createWriteStream(native);
    await writeFlattened(image, file, mtime === undefined ? {} : { mtime });
    await new Promise<void>((resolve) => file.end(resolve));
    return { vm, native, entries: result.entries };
  } finally {
    await image.close();
  }
}

test('the edge-case fixture: dockvm export --engine vm writes the bytes the native engine writes', async (t) => {
  assertBuilt();
  const dir = tempDir(t);
  const archive = join(dir, 'edges.tar');
  await writeEdgeArchive(archive, 'localhost/dockvm-test/export-vm-edges:1');
  const vm = await runDockvm(['export', archive, '-o', join(dir, 'vm.tar'), '--engine', 'vm', '--mtime', '1000', '--json']);
  t.is(vm.exitCode, 0, vm.stderr);
  const native = await runDockvm(['export', archive, '-o', join(dir, 'native.tar'), '--mtime', '1000']);
  t.is(native.exitCode, 0, native.stderr);
  const bytes = readFileSync(join(dir, 'native.tar'));
  t.true(readFileSync(join(dir, 'vm.tar')).equals(bytes), 'the engines disagree: compare the two tars with tar -tvv');

  const seen = await listing(join(dir, 'vm.tar'));
  t.deepEqual(JSON.parse(vm.stdout), { reference: archive, output: join(dir, 'vm.tar'), engine: 'vm', entries: seen.size, size: bytes.length, layers: 3, mtime: 1000 });
  // What the merged view showed and the host corrected: directories no layer declares are left out.
  for (const path of UNDECLARED_DIRS) t.false(seen.has(path), path);
  t.true(seen.has('implicit/deep/file'));
  t.is(seen.get('bin/new')?.mtime, 1000);
  t.deepEqual(Object.keys(seen.get('bin/ping')?.xattrs ?? {}).sort(), ['security.capability', 'user.note']);
});

test('the Debian fixture: both engines give the same bytes, POSIX ACLs included', async (t) => {
  const dir = tempDir(t);
  const { vm, native, entries } = await bothEngines(dir, debianFixture());
  t.true(entries > 5000, `only ${entries} entries`);
  t.true(readFileSync(vm).equals(readFileSync(native)), 'the engines disagree on the Debian fixture');
  // what they agree on includes the ACL layer's ACLs (squashfs cannot hold them: its lower is ext4)
  const seen = await listing(vm);
  const names = (path: string) => Object.keys(seen.get(path)?.xattrs ?? {}).sort();
  t.deepEqual(names('srv/shared'), ['system.posix_acl_access', 'system.posix_acl_default']);
  t.deepEqual(names('srv/shared/report'), ['system.posix_acl_access']);
  t.deepEqual(names('srv/inbox'), ['system.posix_acl_default']);
});

test('what the merged view invents or hides: implied directories, opaque markers without their directory, hard links, xattrs, devices', async (t) => {
  const dir = tempDir(t);
  const archive = join(dir, 'corners.tar');
  const bottom = await layerTar([
    { path: 'declared', type: 'directory', mode: 0o700, uid: 7, mtime: 111 },
    { path: 'declared/a', content: 'a' },
    { path: 'opaque', type: 'directory', mode: 0o711, uid: 8, mtime: 222 },
    { path: 'opaque/old', content: 'old' },
    { path: 'deleted', type: 'directory', mode: 0o750, mtime: 333 },
    { path: 'deleted/x', content: 'x' },
    { path: 'empty', type: 'directory', mode: 0o700, mtime: 5 },
    { path: 'dev', type: 'directory' },
    { path: 'dev/wide', type: 'character-device', mode: 0o600, devmajor: 300, devminor: 70_000 },
    { path: 'dev/nvme', type: 'block-device', mode: 0o660, gid: 6, devmajor: 259, devminor: 1 },
    { path: 'x', type: 'directory', xattrs: { 'user.dir': Buffer.from('d'), 'trusted.note': Buffer.from('t') } },
    { path: 'x/f', content: 'f', xattrs: { 'user.bin': Buffer.from([0, 1, 2, 255]), 'trusted.overlay.origin': Buffer.from('stale') } },
    { path: 'h1', content: 'hard' },
    { path: 'h2', type: 'link', linkname: 'h1' },
    { path: 'h3', type: 'link', linkname: 'h1' },
    { path: 'sym', type: 'symlink', linkname: 'h2', mode: 0o755 },
    { path: 'modes', type: 'directory', mode: 0o1777 },
    { path: 'modes/suid', content: 's', mode: 0o6755 },
    { path: 'modes/none', content: 'n', mode: 0 },
    { path: 'ids', content: 'i', uid: 3_000_000, gid: 65_534, mtime: 4_000_000_000 },
    { path: 'names', type: 'directory' },
    { path: 'names/new\nline', content: 'nl' },
    { path: 'names/back\\slash', content: 'bs' },
    { path: 'file-then-dir', content: 'file' },
    { path: 'dir-then-file', type: 'directory' },
    { path: 'dir-then-file/in', content: 'in' },
  ]);
  const middle = await layerTar([
    { path: '.wh.deleted' },
    { path: 'opaque/.wh..wh..opq' }, // no entry for "opaque" itself: the lower's stays
    { path: 'opaque/new', content: 'new' },
    { path: '.wh.h1' },
    { path: 'file-then-dir', type: 'directory', mode: 0o701 },
    { path: 'file-then-dir/c', content: 'c' },
    { path: 'dir-then-file', content: 'now a file' },
  ]);
  const top = await layerTar([
    { path: 'declared/b', content: 'b' }, // "declared" only implied here: the bottom layer's entry stays
    { path: 'deleted/y', content: 'y' }, // implied over a whiteout: no layer declares it
    { path: 'implied/z', content: 'z' },
  ]);
  await writeDockerArchive(archive, [{ repoTag: 'localhost/dockvm-test/export-vm-corners:1', layers: [bottom, middle, top] }]);
  const { vm, native } = await bothEngines(dir, archive);
  t.true(readFileSync(vm).equals(readFileSync(native)), 'the engines disagree');

  const seen = await listing(vm);
  t.like(seen.get('declared'), { mode: 0o700, uid: 7, mtime: 111 });
  t.like(seen.get('opaque'), { mode: 0o711, uid: 8, mtime: 222 });
  t.false(seen.has('opaque/old'));
  t.false(seen.has('deleted') || seen.has('deleted/x') || seen.has('implied'));
  t.true(seen.has('deleted/y') && seen.has('implied/z'));
  t.like(seen.get('empty'), { type: 'directory', mode: 0o700 });
  t.is(seen.get('dev/wide')?.dev, '300,70000');
  t.is(seen.get('dev/nvme')?.dev, '259,1');
  t.deepEqual(seen.get('x')?.xattrs, { 'trusted.note': Buffer.from('t').toString('hex'), 'user.dir': Buffer.from('d').toString('hex') });
  t.deepEqual(seen.get('x/f')?.xattrs, { 'user.bin': '000102ff' }); // overlay bookkeeping dropped
  t.like(seen.get('h2'), { type: 'file', sha256: createHash('sha256').update('hard').digest('hex') }); // h1 deleted: h2 carries the content
  t.like(seen.get('h3'), { type: 'link', linkname: 'h2' });
  t.like(seen.get('sym'), { type: 'symlink', mode: 0o777 });
  t.is(seen.get('modes/suid')?.mode, 0o6755);
  t.is(seen.get('modes/none')?.mode, 0);
  t.like(seen.get('ids'), { uid: 3_000_000, gid: 65_534, mtime: 4_000_000_000 });
  t.true(seen.has('names/new\nline') && seen.has('names/back\\slash'));
  t.like(seen.get('file-then-dir'), { type: 'directory', mode: 0o701 });
  t.is(seen.get('dir-then-file')?.type, 'file');
  t.false(seen.has('dir-then-file/in'));
});

test('a root opaque marker hides every layer below it (only the layers above are mounted: here a single lower)', async (t) => {
  const dir = tempDir(t);
  const archive = join(dir, 'root-opaque.tar');
  const hidden = await layerTar([{ path: 'etc', type: 'directory' }, { path: 'etc/old', content: 'old' }, { path: 'old', content: 'old' }]);
  const fresh = await layerTar([{ path: '.wh..wh..opq' }, { path: 'etc', type: 'directory', mode: 0o750 }, { path: 'etc/new', content: 'new' }]);
  await writeDockerArchive(archive, [{ repoTag: 'localhost/dockvm-test/export-vm-root-opaque:1', layers: [hidden, fresh] }]);
  const { vm, native } = await bothEngines(dir, archive);
  t.true(readFileSync(vm).equals(readFileSync(native)), 'the engines disagree');
  t.deepEqual([...(await listing(vm)).keys()], ['etc', 'etc/new']);
});

test('an image with no layers exports to an empty tar (the VM mounts nothing but empty lowers)', async (t) => {
  const dir = tempDir(t);
  const archive = join(dir, 'empty.tar');
  await writeDockerArchive(archive, [{ repoTag: 'localhost/dockvm-test/export-vm-empty:1', layers: [] }]);
  const { vm, native, entries } = await bothEngines(dir, archive);
  t.is(entries, 0);
  t.deepEqual(readFileSync(vm), readFileSync(native));
  t.deepEqual(readFileSync(vm), Buffer.alloc(1024));
});

test('bad input is refused as the native engine refuses it, and mtimes squashfs cannot hold unless clamped; no output file is left', async (t) => {
  assertBuilt();
  const dir = tempDir(t);
  const bad = join(dir, 'bad.tar');
  await writeThroughSymlinkArchive(bad, 'localhost/dockvm-test/export-vm-bad:1');
  const future = join(dir, 'future.tar');
  await writeDockerArchive(future, [{ repoTag: 'localhost/dockvm-test/export-vm-future:1', layers: [await layerTar([{ path: 'late', content: 'x', mtime: 5_000_000_000 }])] }]);
  const [vm, native, late, clamped] = await Promise.all([
    runDockvm(['export', bad, '-o', join(dir, 'vm.tar'), '--engine', 'vm']),
    runDockvm(['export', bad, '-o', join(dir, 'native.tar')]),
    runDockvm(['export', future, '-o', join(dir, 'late.tar'), '--engine', 'vm']),
    runDockvm(['export', future, '-o', join(dir, 'clamped.tar'), '--engine', 'vm', '--mtime', '1000']),
  ]);
  t.is(vm.exitCode, 1);
  t.is(vm.stderr, native.stderr);
  t.regex(vm.stderr, /entry "a\/passwd" lies under "a", but layer 1 below makes it a symbolic link/);
  // squashfs keeps 32-bit mtimes: a later one is refused unless the clamp brings it into range.
  t.is(late.exitCode, 2);
  t.regex(late.stderr, /entry "late" has mtime 5000000000, which --engine vm cannot show .*use --engine native, or clamp it with --mtime/);
  t.is(clamped.exitCode, 0, clamped.stderr);
  t.is((await listing(join(dir, 'clamped.tar'))).get('late')?.mtime, 1000);
  t.deepEqual(['vm.tar', 'late.tar'].filter((name) => existsSync(join(dir, name))), []);
});
