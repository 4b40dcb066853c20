import test from 'ava';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa, execaSync } from 'execa';
import { comparePaths } from '../../src/layer/path-order.js';
import { listing } from '../helpers/filesystem.js';
import { needs } from '../helpers/prerequisites.js';
import { FUTURE, LONG_NAME, NON_UTF8_NAME, UNDECLARED_DIRS, writeEdgeArchive, writeThroughSymlinkArchive } from '../fixtures/edge-images.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const BIN = join(REPO, 'bin', 'dockvm.js');

/** Run the built CLI (`npm test` builds first), with its output as bytes and stderr as text. */
async function dockvm(args: string[], env: Record<string, string> = {}) {
  if (!existsSync(join(REPO, 'dist', 'src', 'cli', 'export.js'))) throw new Error('dist/ is missing or stale: run npm run build (npm test does)');
  const run = await execa(process.execPath, [BIN, ...args], { cwd: REPO, reject: false, encoding: 'buffer', env: { SOURCE_DATE_EPOCH: '', ...env } });
  return { exitCode: run.exitCode, stdout: Buffer.from(run.stdout), stderr: Buffer.from(run.stderr).toString() };
}

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-export-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('dockvm export gives the filesystem podman export gives, sorted, without whiteouts', async (t) => {
  const dir = tempDir(t);
  const tag = `localhost/dockvm-test/export-edges:${randomBytes(4).toString('hex')}`;
  const container = `dockvm-test-export-${randomBytes(4).toString('hex')}`;
  const archive = join(dir, 'edges.tar');
  await writeEdgeArchive(archive, tag);
  t.teardown(async () => {
    await execa('podman', ['rm', '--force', '--ignore', container], { reject: false });
    await execa('podman', ['rmi', '--force', tag], { reject: false });
  });

  const ours = join(dir, 'ours.tar');
  const run = await dockvm(['export', archive, '-o', ours]);
  t.is(run.exitCode, 0, run.stderr);
  await execa('podman', ['load', '--quiet', '--input', archive]);
  await execa('podman', ['create', '--name', container, tag, '/nothing']);
  const theirs = join(dir, 'theirs.tar');
  await execa('podman', ['export', '--output', theirs, container]);

  const mine = await listing(ours);
  const podman = await listing(theirs);
  // Exception: podman's extraction creates the parents no layer declares (mode 755, mtime = now);
  // dockvm does not invent entries. Nothing else differs: podman create adds no mount points (/etc/hosts,
  // /run, …) to the container's filesystem before it first starts (checked with podman 4.3).
  for (const path of UNDECLARED_DIRS) {
    t.is(podman.get(path)?.type, 'directory', path);
    podman.delete(path);
  }
  t.deepEqual([...mine.keys()].sort(), [...podman.keys()].sort());
  for (const [path, entry] of podman) t.deepEqual(mine.get(path), entry, JSON.stringify(path));

  // Spot checks that the fixture exercised what it should.
  t.deepEqual([...mine.keys()], [...mine.keys()].sort(comparePaths));
  t.deepEqual([...mine.keys()].slice(0, 7), ['big', 'bin', 'bin/aa', 'bin/new', 'bin/ping', 'bin/pong', 'bin/zz']);
  t.is(mine.get('bin/zz')?.linkname, 'bin/aa');
  t.is(mine.get('l-gone')?.type, 'file');
  t.is(mine.get('l-gone2')?.linkname, 'l-gone');
  t.is(mine.get('sym-dir')?.type, 'symlink');
  t.true(mine.has(LONG_NAME) && mine.has(NON_UTF8_NAME));
  t.false([...mine.keys()].some((path) => path.includes('.wh.') || path.startsWith('ww') || path.startsWith('o/old')));
});

test('the same image exports to the same bytes; --mtime and SOURCE_DATE_EPOCH clamp; -o - streams them; --json describes them', async (t) => {
  const dir = tempDir(t);
  const archive = join(dir, 'edges.tar');
  await writeEdgeArchive(archive, 'localhost/dockvm-test/edges:1');
  const [a, b, clamped, viaEnv, piped] = await Promise.all([
    dockvm(['export', archive, '-o', join(dir, 'a.tar'), '--json']),
    dockvm(['export', archive, '-o', join(dir, 'b.tar')]),
    dockvm(['export', archive, '-o', join(dir, 'clamped.tar'), '--mtime', '1000']),
    dockvm(['export', archive, '-o', join(dir, 'env.tar')], { SOURCE_DATE_EPOCH: '1000' }),
    dockvm(['export', `docker-archive:${archive}`, '-o', '-']),
  ]);
  for (const run of [a, b, clamped, viaEnv, piped]) t.is(run.exitCode, 0, run.stderr);
  const bytes = readFileSync(join(dir, 'a.tar'));
  t.deepEqual(readFileSync(join(dir, 'b.tar')), bytes);
  t.deepEqual(piped.stdout, bytes);
  t.deepEqual(readFileSync(join(dir, 'env.tar')), readFileSync(join(dir, 'clamped.tar')));
  t.notDeepEqual(readFileSync(join(dir, 'clamped.tar')), bytes);

  const plain = await listing(join(dir, 'a.tar'));
  const clamp = await listing(join(dir, 'clamped.tar'));
  t.is(plain.get('bin/new')?.mtime, FUTURE);
  t.is(clamp.get('bin/new')?.mtime, 1000);
  t.is(clamp.get('etc/passwd')?.mtime, 1); // already older than the clamp

  const result = JSON.parse(a.stdout.toString());
  t.deepEqual(result, {
    reference: archive,
    output: join(dir, 'a.tar'),
    engine: 'native',
    entries: plain.size,
    size: bytes.length,
    layers: 3,
  });
});

test('bad input and bad usage: one-line errors, exit codes, no output file left', async (t) => {
  const dir = tempDir(t);
  const bad = join(dir, 'bad.tar');
  await writeThroughSymlinkArchive(bad, 'localhost/dockvm-test/bad:1');
  const [through, noOutput, vm, mtime] = await Promise.all([
    dockvm(['export', bad, '-o', join(dir, 'x.tar')]),
    dockvm(['export', bad]),
    dockvm(['export', bad, '-o', join(dir, 'vm.tar'), '--engine', 'bogus']),
    dockvm(['export', bad, '-o', join(dir, 'm.tar'), '--mtime', 'yesterday']),
  ]);
  t.is(through.exitCode, 1);
  t.regex(through.stderr, new RegExp(`^dockvm: ${bad.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: layer 2/2 \\(sha256:[0-9a-f]{64}\\): entry "a/passwd" lies under "a", but layer 1 below makes it a symbolic link \\(-> "/etc"\\)`));
  t.is(through.stderr.trim().split('\n').length, 1);
  t.is(noOutput.exitCode, 2);
  t.regex(noOutput.stderr, /give -o FILE for the tar, or -o - to write it to stdout/);
  t.is(vm.exitCode, 2);
  t.regex(vm.stderr, /'bogus' is invalid\. Allowed choices are native, vm/);
  t.is(mtime.exitCode, 2);
  t.regex(mtime.stderr, /--mtime must be whole seconds since the epoch/);
  t.deepEqual(readdirSync(dir).sort(), ['bad.tar']);
});

test('an OCI layout with gzip layers (spooled) exports to the same bytes as the plain archive (read in place)', async (t) => {
  const dir = tempDir(t);
  const archive = join(dir, 'edges.tar');
  await writeEdgeArchive(archive, 'localhost/dockvm-test/edges:1');
  await execa('skopeo', ['copy', '--quiet', `docker-archive:${archive}`, `oci:${join(dir, 'layout')}:edges`, '--dest-compress-format', 'gzip']);
  const [plain, oci] = await Promise.all([
    dockvm(['export', archive, '-o', '-']),
    dockvm(['export', `oci:${join(dir, 'layout')}:edges`, '-o', '-']),
  ]);
  t.is(plain.exitCode, 0, plain.stderr);
  t.is(oci.exitCode, 0, oci.stderr);
  t.true(oci.stdout.equals(plain.stdout));
  t.true(plain.stdout.length > 300_000);
});

/** Whether this process may mount a 128 KiB tmpfs (root, as CI runs; not in most sandboxes). */
function canMountTmpfs(): boolean {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-mount-probe-'));
  try {
    if (execaSync('mount', ['-t', 'tmpfs', '-o', 'size=128k', 'tmpfs', dir], { reject: false }).exitCode !== 0) return false;
    execaSync('umount', [dir], { reject: false });
    return true;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

needs(canMountTmpfs(), 'cannot mount a tmpfs here (needs root)')('a full disk: a clear error naming the output, exit 1, nothing left', async (t) => {
  // a 128 KiB tmpfs, smaller than the export
  const dir = tempDir(t);
  await execa('mount', ['-t', 'tmpfs', '-o', 'size=128k', 'tmpfs', dir]);
  t.teardown(() => execa('umount', [dir], { reject: false }).then(() => undefined));
  const archive = join(tmpdir(), `dockvm-full-${randomBytes(4).toString('hex')}.tar`);
  t.teardown(() => rmSync(archive, { force: true }));
  await writeEdgeArchive(archive, 'localhost/dockvm-test/full:1');
  const out = join(dir, 'out.tar');
  const run = await dockvm(['export', archive, '-o', out]);
  t.is(run.exitCode, 1);
  t.is(run.stderr.trimEnd(), `dockvm: no space left on device (${out}): free some space, or point -o (or TMPDIR for temp files) elsewhere; nothing was written`);
  t.deepEqual(readdirSync(dir), []);
});
