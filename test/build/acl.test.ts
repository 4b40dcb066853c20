// POSIX ACLs of lower layers in run-as-root, with a real boot (TCG here). squashfs cannot hold them, so
// the Debian fixture's ACL layer (layer 4, scripts/fixtures/debian-layers.ts) is mounted from an ext4
// lower the build VM made and dockvm cached. The script shows them with getfacl, a copied-up file keeps
// its ACL in the form the lower had, and a new file inherits the directory's default ACL as on any Linux
// filesystem. Then export: an ACL layer with whiteouts, an opaque directory, implied directories and hard
// links (what the ext4 lower must hold as the squashfs ones do) gives the same bytes from both engines,
// and a malformed ACL is refused clearly. (The Debian fixture through both engines: export-vm.test.ts.)
import anyTest, { type TestFn } from 'ava';
import { createHash } from 'node:crypto';
import { createWriteStream, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { exportInVm } from '../../src/build/export-vm.js';
import { ext4LowerPath } from '../../src/build/lowers.js';
import { writeFlattened } from '../../src/flatten/flatten.js';
import { hex } from '../../src/image/digest.js';
import type { Layer } from '../../src/image/image.js';
import { lowerImagesDir, squashfsPath } from '../../src/layer/squashfs.js';
import { openImage } from '../../src/transport/index.js';
import { debianFixture } from '../fixtures/debian.js';
import { layerTar, writeDockerArchive } from '../fixtures/assemble.js';
import { describeAcl, posixAcl } from '../fixtures/posix-acl.js';
import { listing, type Seen } from '../helpers/filesystem.js';
import { runDockvm, type Run } from '../helpers/peers.js';

interface Context {
  run: Run;
  /** the new layer's entries */
  layer: Map<string, Seen>;
  /** the fixture's ACL layer's entries */
  lower: Map<string, Seen>;
  /** the cached lower images of the fixture's layers, bottom first */
  lowers: { ext4: boolean; squashfs: boolean }[];
}

const test = anyTest as TestFn<Context>;

const SCRIPT = `
getfacl -n -p /srv/shared /srv/shared/report /srv/inbox
echo more >> /srv/shared/report
touch /srv/shared/new
`;

const ACCESS = 'system.posix_acl_access';
const DEFAULT = 'system.posix_acl_default';

test.before(async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-acl-vm-test-'));
  try {
    const spec = join(dir, 'spec.json');
    writeFileSync(spec, JSON.stringify({ name: 'localhost/dockvm-test/acl', tag: '1', fromImage: debianFixture(), runAsRoot: SCRIPT, output: 'image.tar' }));
    const run = await runDockvm(['run-as-root', spec]);
    if (run.exitCode !== 0) throw new Error(`run-as-root failed: ${run.stderr}`);
    const base = await openImage(debianFixture());
    const built = await openImage(join(dir, 'image.tar'));
    try {
      const tar = async (name: string, layer: Layer) => {
        const path = join(dir, name);
        await pipeline(await layer.openTar(), createWriteStream(path));
        return listing(path);
      };
      t.context = {
        run,
        layer: await tar('new.tar', built.layers.at(-1)!),
        lower: await tar('acl-layer.tar', base.layers[3]!),
        lowers: base.layers.map((layer) => ({ ext4: existsSync(ext4LowerPath(layer)), squashfs: existsSync(squashfsPath(layer)) })),
      };
    } finally {
      await Promise.all([base.close(), built.close()]);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

const acl = (entry: Seen | undefined, name: string) => {
  const hex = entry?.xattrs?.[name];
  return hex === undefined ? undefined : describeAcl(Buffer.from(hex, 'hex'));
};

test('the script sees the lower layer\'s ACLs of both kinds (getfacl)', (t) => {
  const shown = t.context.run.stderr;
  const block = (path: string, lines: string[]) => `# file: ${path}\n# owner: 0\n# group: 0\n${lines.join('\n')}\n\n`;
  t.true(shown.includes(block('/srv/shared', [
    'user::rwx', 'user:1000:rwx', 'group::r-x', 'mask::rwx', 'other::r-x',
    'default:user::rwx', 'default:user:1000:rwx', 'default:group::r-x', 'default:group:100:rwx', 'default:mask::rwx', 'default:other::r-x',
  ])), shown);
  t.true(shown.includes(block('/srv/shared/report', ['user::rw-', 'user:1000:r--', 'group::r--', 'mask::r--', 'other::---'])), shown);
  t.true(shown.includes(block('/srv/inbox', [
    'user::rwx', 'group::r-x', 'other::r-x',
    'default:user::rwx', 'default:group::r-x', 'default:group:100:rwx', 'default:mask::rwx', 'default:other::r-x',
  ])), shown);
});

test('a copied-up file and its copied-up directory keep their ACLs, byte for byte as the lower layer had them', (t) => {
  const { layer, lower } = t.context;
  t.like(layer.get('srv/shared/report'), { type: 'file', mode: 0o640, size: 'quarterly figures\nmore\n'.length });
  t.is(layer.get('srv/shared/report')?.xattrs?.[ACCESS], lower.get('srv/shared/report')?.xattrs?.[ACCESS]);
  t.deepEqual(layer.get('srv/shared')?.xattrs, lower.get('srv/shared')?.xattrs);
  t.deepEqual(Object.keys(layer.get('srv/shared')?.xattrs ?? {}).sort(), [ACCESS, DEFAULT]);
  t.false(layer.has('srv/inbox'), 'an untouched ACL directory stays in its layer');
});

test('a new file inherits the default ACL of its directory, as the kernel makes it', (t) => {
  const created = t.context.layer.get('srv/shared/new');
  t.like(created, { type: 'file', mode: 0o664 });
  // touch asks for 0666: the default ACL's entries, the mask and other limited by it
  t.deepEqual(acl(created, ACCESS), ['user::rw-', 'user:1000:rwx', 'group::r-x', 'group:100:rwx', 'mask::rw-', 'other::r--']);
  t.is(acl(created, DEFAULT), undefined, 'a file has no default ACL');
});

test('only the layer with ACLs has an ext4 lower; the others stay squashfs', (t) => {
  t.deepEqual(t.context.lowers, [
    { ext4: false, squashfs: true },
    { ext4: false, squashfs: true },
    { ext4: false, squashfs: true },
    { ext4: true, squashfs: false },
  ]);
});

test('a script that leaves / alone gets no warning about it', (t) => {
  t.notRegex(t.context.run.stderr, /warning/);
});

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-acl-export-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const FILE_ACL = posixAcl('u::rw-,u:7:rw-,g::r--,m::rw-,o::r--'); // mode 0664
const DIR_ACL = posixAcl('u::rwx,g::r-x,g:7:rwx,m::rwx,o::r-x'); // mode 0775

test('export: an ACL layer with whiteouts, an opaque directory, implied directories and hard links gives the same bytes from both engines', async (t) => {
  const dir = tempDir(t);
  const bottom = await layerTar([
    { path: 'etc', type: 'directory' },
    { path: 'etc/old', content: 'old' },
    { path: 'opt', type: 'directory', mode: 0o750, mtime: 77 },
    { path: 'opt/hidden', content: 'hidden' },
  ]);
  const acls = await layerTar([
    { path: 'etc/.wh.old' },
    { path: 'opt/.wh..wh..opq' }, // no entry for opt itself: the lower's stays
    { path: 'opt/new', content: 'new', mode: 0o664, xattrs: { 'system.posix_acl_access': FILE_ACL } },
    { path: 'deep/implied/file', content: 'deep', mode: 0o664, xattrs: { 'system.posix_acl_access': FILE_ACL } },
    { path: 'h1', content: 'linked', mode: 0o664, xattrs: { 'system.posix_acl_access': FILE_ACL } },
    { path: 'h2', type: 'link', linkname: 'h1', mode: 0o664, xattrs: { 'system.posix_acl_access': FILE_ACL } },
    { path: 'shared', type: 'directory', mode: 0o775, xattrs: { 'system.posix_acl_access': DIR_ACL, 'system.posix_acl_default': DIR_ACL } },
  ]);
  const archive = join(dir, 'acl-export.tar');
  await writeDockerArchive(archive, [{ repoTag: 'localhost/dockvm-test/acl-export:1', layers: [bottom, acls] }]);
  const image = await openImage(archive);
  try {
    // made in this run, not found in the cache: the build VM's fill-lower step is what is tested
    rmSync(ext4LowerPath(image.layers[1]!), { force: true });
    const vm = join(dir, 'vm.tar');
    await exportInVm(image, vm);
    const native = join(dir, 'native.tar');
    const file = createWriteStream(native);
    await writeFlattened(image, file);
    await new Promise<void>((resolve) => file.end(resolve));
    t.true(readFileSync(vm).equals(readFileSync(native)), 'the engines disagree: compare the two tars with tar -tvv --xattrs');
    t.true(existsSync(ext4LowerPath(image.layers[1]!)) && existsSync(squashfsPath(image.layers[0]!)), 'an ext4 lower over a squashfs one');
    const seen = await listing(vm);
    t.deepEqual([...seen.keys()], ['deep/implied/file', 'etc', 'h1', 'h2', 'opt', 'opt/new', 'shared']);
    t.like(seen.get('opt'), { mode: 0o750, mtime: 77 });
    t.like(seen.get('h2'), { type: 'link', linkname: 'h1' });
    t.deepEqual(acl(seen.get('opt/new'), ACCESS), describeAcl(FILE_ACL));
    t.deepEqual(acl(seen.get('shared'), DEFAULT), describeAcl(DIR_ACL));
  } finally {
    await image.close();
  }
});

test('a malformed ACL: the build VM cannot make the lower, the error names the layer and the kernel\'s refusal, nothing is cached', async (t) => {
  const dir = tempDir(t);
  const bad = await layerTar([{ path: 'f', content: 'f', xattrs: { 'system.posix_acl_access': Buffer.from('02000000010006', 'hex') } }]);
  const archive = join(dir, 'bad-acl.tar');
  await writeDockerArchive(archive, [{ repoTag: 'localhost/dockvm-test/bad-acl:1', layers: [bad] }]);
  const run = await runDockvm(['export', archive, '-o', join(dir, 'out.tar'), '--engine', 'vm']);
  t.is(run.exitCode, 1, run.stderr);
  t.regex(run.stderr, /layer sha256:[0-9a-f]{64} holds POSIX ACLs, so its lower is an ext4 image, which the build VM could not make/);
  t.regex(run.stderr, /Cannot set 'system\.posix_acl_access' extended attribute for file 'f': Invalid argument/);
  t.false(existsSync(join(dir, 'out.tar')));
  const diffId = hex(`sha256:${createHash('sha256').update(bad).digest('hex')}`);
  t.deepEqual(readdirSync(lowerImagesDir()).filter((name) => name.includes(diffId)), [], 'no image, no temp file');
  // the native engine copies the record as it is
  t.is((await runDockvm(['export', archive, '-o', join(dir, 'native.tar')])).exitCode, 0);
});
