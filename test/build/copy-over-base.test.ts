// copyToRoot over a merged-/usr base (bin -> usr/bin, as every current Debian, Ubuntu and Fedora has):
// where each copied entry lands for both values of keepContentsDirlinks, the warning when a copied
// directory replaces a link of the base, the error when that hides the image's shell — first on the
// model, then through the CLI over the Debian fixture (no VM: these are decided before one boots), and
// once with runAsRoot in a real VM.
import test from 'ava';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, chmodSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { baseTree, CopyPlacement, hiddenShellError, replacedLinkWarnings } from '../../src/build/copy-over-base.js';
import { readTar, type TarEntry } from '../../src/layer/tar.js';
import { openImage } from '../../src/transport/index.js';
import { layerTar } from '../fixtures/assemble.js';
import { debianBaseFixture } from '../fixtures/debian.js';
import { memoryImage } from '../helpers/memory-image.js';
import { runDockvm } from '../helpers/peers.js';

const dir = (path: string): TarEntry => ({ path, type: 'directory', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 1 });
const file = (path: string): TarEntry => ({ path, type: 'file', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 1 });

/** A merged-/usr base in two layers; the upper one moves /var/run to an absolute link. */
async function mergedUsrBase() {
  const lower = await layerTar([
    { path: 'bin', type: 'symlink', linkname: 'usr/bin' },
    { path: 'sbin', type: 'symlink', linkname: 'usr/sbin' },
    { path: 'usr', type: 'directory' },
    { path: 'usr/bin', type: 'directory' },
    { path: 'usr/bin/dash' },
    { path: 'usr/bin/sh', type: 'symlink', linkname: 'dash' },
    { path: 'usr/bin/bash' },
    { path: 'usr/sbin', type: 'directory' },
    { path: 'usr/sbin/useradd' },
    { path: 'run', type: 'directory' },
    { path: 'var', type: 'directory' },
    { path: 'var/run', type: 'directory' },
    { path: 'var/run/old' },
  ]);
  const upper = await layerTar([
    { path: 'var/.wh.run' },
    { path: 'var/run', type: 'symlink', linkname: '/run' },
  ]);
  return baseTree(memoryImage([lower, upper]), 'base.tar');
}

function placeAll(placement: CopyPlacement, entries: TarEntry[]): (string | undefined)[] {
  return entries.map((entry) => {
    const placed = placement.place(entry);
    return placed && (placed.type === 'link' ? `${placed.path} => ${placed.linkname}` : placed.path);
  });
}

test('keepContentsDirlinks false: a copied bin/ replaces the base\'s /bin -> usr/bin, which hides /bin/sh and /bin/bash: an error naming the link', async (t) => {
  const placement = new CopyPlacement(await mergedUsrBase(), false);
  t.deepEqual(placeAll(placement, [dir('bin'), file('bin/hello')]), ['bin', 'bin/hello']);
  t.deepEqual(placement.replaced, [{ path: 'bin', target: 'usr/bin', resolved: 'usr/bin' }]);
  const error = hiddenShellError(placement, ['/bin/sh', '/bin/bash', '/usr/sbin/useradd']);
  t.is(
    error?.message,
    'copyToRoot replaces the base\'s symbolic link "/bin" (-> "usr/bin") with a directory, which hides the image\'s "/bin/sh" and "/bin/bash"; ' +
      'set keepContentsDirlinks: true to copy into "/usr/bin" instead',
  );
  t.is(error?.context.field, 'keepContentsDirlinks');
});

test('keepContentsDirlinks false: a replaced link that hides no shell is a warning naming it, what it pointed to and keepContentsDirlinks: true', async (t) => {
  const placement = new CopyPlacement(await mergedUsrBase(), false);
  placeAll(placement, [dir('sbin'), file('sbin/tool')]);
  t.is(hiddenShellError(placement, ['/bin/sh', '/bin/bash']), undefined);
  t.deepEqual(replacedLinkWarnings(placement), [
    'copyToRoot replaces the base\'s symbolic link "/sbin" (-> "usr/sbin") with a directory, so the image loses what "/sbin" held; set keepContentsDirlinks: true to copy into "/usr/sbin" instead',
  ]);
});

test('keepContentsDirlinks true: entries go through the base\'s links (an absolute one stays inside the image), hard links follow them', async (t) => {
  const placement = new CopyPlacement(await mergedUsrBase(), true);
  const link: TarEntry = { ...file('bin/again'), type: 'link', linkname: 'bin/hello' };
  t.deepEqual(placeAll(placement, [dir('bin'), file('bin/hello'), link, dir('var'), dir('var/run'), file('var/run/pid')]), [
    undefined, // the link is kept: nothing to write for the directory
    'usr/bin/hello',
    'usr/bin/again => usr/bin/hello',
    'var',
    undefined,
    'run/pid', // var/run -> /run: the image's /run, not the build VM's
  ]);
  t.deepEqual(placement.replaced, []);
  t.is(hiddenShellError(placement, ['/bin/sh', '/bin/bash']), undefined);
});

test('a copied file over a link is no dirlink replacement, but hiding the shell still is an error', async (t) => {
  const placement = new CopyPlacement(await mergedUsrBase(), false);
  placeAll(placement, [file('bin')]);
  t.deepEqual(placement.replaced, []);
  t.is(hiddenShellError(placement, ['/bin/sh'])?.message, 'copyToRoot hides the image\'s "/bin/sh"');
  // a copy that brings its own bin/sh hides nothing
  const own = new CopyPlacement(await mergedUsrBase(), false);
  placeAll(own, [dir('bin'), file('bin/sh'), file('bin/bash')]);
  t.is(hiddenShellError(own, ['/bin/sh', '/bin/bash']), undefined);
  t.is(replacedLinkWarnings(own).length, 1);
});

// ---- through the CLI, over the Debian fixture (bin -> usr/bin, sbin -> usr/sbin): no VM boots -------

function tempDir(t: { teardown(fn: () => void): void }): string {
  const path = mkdtempSync(join(tmpdir(), 'dockvm-dirlinks-test-'));
  t.teardown(() => rmSync(path, { recursive: true, force: true }));
  return path;
}

/** A spec over the Debian base copying `relative` (an executable script); DOCKVM_QEMU names no program, so a boot would fail loudly. */
function specCopying(dir: string, relative: string, extra: Record<string, unknown>): string {
  const root = join(dir, 'root');
  mkdirSync(join(root, relative, '..'), { recursive: true });
  writeFileSync(join(root, relative), '#!/bin/sh\necho hello from copyToRoot\n');
  chmodSync(join(root, relative), 0o755);
  const spec = join(dir, 'spec.json');
  writeFileSync(spec, JSON.stringify({ name: 'localhost/dockvm-test/dirlinks', tag: 'v1', fromImage: debianBaseFixture(), copyToRoot: 'root', output: 'image.tar', ...extra }));
  return spec;
}

const NO_VM = { DOCKVM_QEMU: '/nonexistent/qemu-would-have-booted' };

async function topLayerPaths(archive: string): Promise<string[]> {
  const image = await openImage(archive);
  try {
    const paths: string[] = [];
    for await (const { entry } of readTar(await image.layers.at(-1)!.openTar(), { source: 'top layer' })) paths.push(entry.path);
    return paths;
  } finally {
    await image.close();
  }
}

test('CLI: copyToRoot bin/ over the Debian base with runAsRoot: exit 1 before any VM boots, nothing written', async (t) => {
  const dir = tempDir(t);
  const spec = specCopying(dir, 'bin/hello', { runAsRoot: 'hello' });
  const run = await runDockvm(['run-as-root', spec], { env: NO_VM });
  t.is(run.exitCode, 1, run.stderr);
  t.regex(run.stderr, /replaces the base's symbolic link "\/bin" \(-> "usr\/bin"\) with a directory, which hides the image's "\/bin\/sh" and "\/bin\/bash"; set keepContentsDirlinks: true/);
  t.notRegex(run.stderr, /qemu/);
  t.false(existsSync(join(dir, 'image.tar')));
});

test('CLI: copyToRoot sbin/ without runAsRoot: a warning, and the image has the directory', async (t) => {
  const dir = tempDir(t);
  const run = await runDockvm(['run-as-root', specCopying(dir, 'sbin/hello', {})], { env: NO_VM });
  t.is(run.exitCode, 0, run.stderr);
  t.regex(run.stderr, /^dockvm: warning: copyToRoot replaces the base's symbolic link "\/sbin" \(-> "usr\/sbin"\) with a directory, so the image loses what "\/sbin" held; set keepContentsDirlinks: true to copy into "\/usr\/sbin" instead$/m);
  t.deepEqual(await topLayerPaths(join(dir, 'image.tar')), ['sbin', 'sbin/hello']);
});

test('CLI: keepContentsDirlinks true without runAsRoot: bin/hello lands in usr/bin, the base\'s /bin link untouched, no warning', async (t) => {
  const dir = tempDir(t);
  const run = await runDockvm(['run-as-root', specCopying(dir, 'bin/hello', { keepContentsDirlinks: true })], { env: NO_VM });
  t.is(run.exitCode, 0, run.stderr);
  t.notRegex(run.stderr, /warning/);
  t.deepEqual(await topLayerPaths(join(dir, 'image.tar')), ['usr/bin/hello']);
});

test('VM: keepContentsDirlinks true copies bin/hello into usr/bin with the image intact; a #!/bin/sh script runs under the image\'s sh', async (t) => {
  const dir = tempDir(t);
  const script = '#!/bin/sh\necho "sh: $(readlink /proc/$$/exe)"\nhello\necho "bin: $(readlink /bin)"\ntest -x /bin/bash && echo "bash: still there"\n';
  const run = await runDockvm(['run-as-root', specCopying(dir, 'bin/hello', { keepContentsDirlinks: true, runAsRoot: script })]);
  t.is(run.exitCode, 0, run.stderr);
  t.regex(run.stderr, /^sh: \/usr\/bin\/dash\nhello from copyToRoot\nbin: usr\/bin\nbash: still there\n/m);
  t.notRegex(run.stderr, /warning/);
  const paths = await topLayerPaths(join(dir, 'image.tar'));
  t.true(paths.includes('usr/bin/hello'), paths.join(' '));
  t.false(paths.some((path) => path === 'bin' || path.startsWith('bin/')), paths.join(' '));
});
