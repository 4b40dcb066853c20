// "/" itself in a new layer. The peers write no root entry: buildah (checked here), Docker's overlay2
// diff and BuildKit's differs (they skip the root), and moby, containerd and containers/storage skip a
// root entry when they unpack a layer. So a runAsRoot `chmod 0700 / && chown 1:1 /` cannot reach the
// image; dockvm leaves "/" out as they do, keeps the layer's bytes, and says so. One boot (TCG here).
import test, { type ExecutionContext } from 'ava';
import { createWriteStream, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { execa } from 'execa';
import { rootChangeWarning } from '../../src/build/root-change.js';
import type { TarEntry } from '../../src/layer/tar.js';
import { openImage } from '../../src/transport/index.js';
import { debianBaseFixture } from '../fixtures/debian.js';
import { listing, podmanExport } from '../helpers/filesystem.js';
import { hasTool, runDockvm, uniqueName } from '../helpers/peers.js';

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-root-entry-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The entries of an image's top layer. */
async function topLayer(dir: string, reference: string) {
  const image = await openImage(reference);
  try {
    const path = join(dir, `top-${uniqueName('layer')}.tar`);
    await pipeline(await image.layers.at(-1)!.openTar(), createWriteStream(path));
    return await listing(path);
  } finally {
    await image.close();
  }
}

/** `test` when `missing` is undefined; else skipped with the reason, or under CI=true a failure. */
function needs(missing: string | undefined): (title: string, fn: (t: ExecutionContext) => Promise<void>) => void {
  if (missing === undefined) return test;
  if (process.env.CI === 'true') return (title) => test(title, (t) => t.fail(`prerequisite missing: ${missing}`));
  return (title, fn) => test.skip(`${title} (skipped: ${missing})`, fn);
}

const SCRIPT = 'mkdir /srv/made\nchmod 0700 / && chown 1:1 /\n';

test('run-as-root: a chmod and chown of / leave no root entry in the layer, and a warning says they are lost', async (t) => {
  const dir = tempDir(t);
  const spec = join(dir, 'spec.json');
  writeFileSync(spec, JSON.stringify({ name: 'localhost/dockvm-test/root-entry', tag: '1', fromImage: debianBaseFixture(), runAsRoot: SCRIPT, output: 'image.tar' }));
  const run = await runDockvm(['run-as-root', spec]);
  t.is(run.exitCode, 0, run.stderr);
  t.regex(run.stderr, /^dockvm: warning: the script changed \/ itself \(mode 0700, owner 1:1\), which no layer carries: /m);
  const image = join(dir, 'image.tar');
  const layer = await topLayer(dir, image);
  t.deepEqual([...layer.keys()], ['srv', 'srv/made'], 'no root entry ("./"): only what changed under it');

  // What the image then shows as "/": no export has an entry for it, podman's as dockvm's.
  const native = join(dir, 'export.tar');
  t.is((await runDockvm(['export', image, '-o', native])).exitCode, 0);
  t.false((await listing(native)).has(''), 'dockvm export writes no root entry');
  t.false((await listing(await podmanExport(t, image, 'localhost/dockvm-test/root-entry:1'))).has(''), 'podman export writes none either');
});

const buildahMissing = !hasTool('buildah') || !hasTool('skopeo') ? 'buildah or skopeo is not installed' : process.getuid?.() !== 0 ? 'buildah bud --isolation chroot needs root' : undefined;

needs(buildahMissing)('buildah, the peer, writes no root entry for the same RUN either', async (t) => {
  const dir = tempDir(t);
  const name = `localhost/dockvm-test/${uniqueName('root-entry')}`;
  const [base, tag] = [`${name}-base:1`, `${name}:1`];
  t.teardown(async () => {
    await execa('buildah', ['rmi', '--force', tag, base], { reject: false });
  });
  // the base under a name of its own (FROM docker-archive: would leave the fixture's name in the store)
  await execa('skopeo', ['copy', '--quiet', `docker-archive:${debianBaseFixture()}`, `containers-storage:${base}`]);
  writeFileSync(join(dir, 'Containerfile'), `FROM ${base}\nRUN ${SCRIPT.trim().replace(/\n/g, ' && ')}\n`);
  await execa('buildah', ['bud', '--quiet', '--format', 'docker', '--isolation', 'chroot', '-t', tag, '-f', join(dir, 'Containerfile'), dir]);
  const archive = join(dir, 'buildah.tar');
  await execa('buildah', ['push', '--quiet', tag, `docker-archive:${archive}:${tag}`]);
  const layer = await topLayer(dir, archive);
  t.true(layer.has('srv/made'), 'the RUN step ran');
  t.false(layer.has(''), 'no root entry');
});

test('what counts as a change of /: mode, owner, xattrs (not overlayfs\' bookkeeping, nor the mtime)', (t) => {
  const root = (extra: Partial<TarEntry> = {}): TarEntry => ({ path: '', type: 'directory', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 12345, ...extra });
  t.is(rootChangeWarning(undefined), undefined);
  t.is(rootChangeWarning(root()), undefined);
  t.is(rootChangeWarning(root({ xattrs: { 'trusted.overlay.impure': Buffer.from('y') } })), undefined);
  t.regex(rootChangeWarning(root({ mode: 0o1777 })) ?? '', /\(mode 1777\)/);
  t.regex(rootChangeWarning(root({ gid: 5 })) ?? '', /\(owner 0:5\)/);
  t.regex(rootChangeWarning(root({ xattrs: { 'user.b': Buffer.from('1'), 'system.posix_acl_access': Buffer.from([2]) } })) ?? '', /\(xattrs system\.posix_acl_access, user\.b\)/);
});
