// A base of a platform dockvm has no build VM for: runAsRoot and shell over it are refused before any VM
// boots, naming its platform and the ones dockvm runs, with nothing written. An arm64 base on a host
// without arm64's QEMU: one line saying what to install. Without runAsRoot (nothing executes) the image
// is built and labelled with the base's platform (arm64 with its variant v8); a spec architecture
// contradicting the base is an error. An image whose config says amd64 but whose shell is an aarch64
// program gets the exec format error reported, never the bundled bash in its place (one real boot).
// The arm64 builds themselves are test/build/arm64.test.ts.
import test from 'ava';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImage } from '../../src/transport/index.js';
import { layerTar, writeDockerArchive } from '../fixtures/assemble.js';
import { runDockvm } from '../helpers/peers.js';

/**
 * The first bytes of an aarch64 ELF executable (ELF64, little-endian, ET_EXEC, EM_AARCH64 = 0xb7): enough
 * for an amd64 kernel to refuse it with ENOEXEC, as it refuses a real arm64 busybox.
 */
const AARCH64_ELF = Buffer.concat([
  Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]),
  Buffer.alloc(8),
  Buffer.from([2, 0, 0xb7, 0, 1, 0, 0, 0]),
  Buffer.alloc(40),
]);

/** A one-layer image whose /bin/sh and /bin/bash are aarch64 programs, its config saying `architecture`. */
async function aarch64Image(dir: string, architecture: string, variant?: string): Promise<string> {
  const layer = await layerTar([
    { path: 'bin', type: 'directory' },
    { path: 'bin/sh', mode: 0o755, content: AARCH64_ELF },
    { path: 'bin/bash', mode: 0o755, content: AARCH64_ELF },
  ]);
  const archive = join(dir, `busybox-${architecture}.tar`);
  await writeDockerArchive(archive, [{ repoTag: `localhost/dockvm-test/busybox:${architecture}`, layers: [layer], architecture, ...(variant ? { config: { variant } } : {}) }]);
  return archive;
}

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-platform-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function writeSpec(dir: string, spec: Record<string, unknown>): string {
  const path = join(dir, 'spec.json');
  writeFileSync(path, JSON.stringify({ name: 'localhost/dockvm-test/platform', tag: 'v1', output: 'image.tar', ...spec }));
  return path;
}

/** A boot would fail on these QEMUs: these refusals must come before one. */
const NO_VM = { DOCKVM_QEMU: '/nonexistent/qemu-would-have-booted', DOCKVM_QEMU_ARM64: '/nonexistent/qemu-would-have-booted' };

test('a base of a platform dockvm has no VM for: runAsRoot and shell are refused naming it and the ones it runs, exit 1, nothing written, no VM', async (t) => {
  const dir = tempDir(t);
  const base = await aarch64Image(dir, 'arm', 'v7');
  const build = await runDockvm(['run-as-root', writeSpec(dir, { fromImage: base, runAsRoot: 'uname -m' })], { env: NO_VM });
  t.is(build.exitCode, 1, build.stderr);
  t.regex(build.stderr, /^dockvm: fromImage \S+busybox-arm\.tar is linux\/arm\/v7, which dockvm has no build VM for \(it runs linux\/amd64, linux\/arm64\/v8\)$/m);
  t.false(existsSync(join(dir, 'image.tar')));
  const shell = await runDockvm(['shell', base, '--', 'uname', '-m'], { env: NO_VM });
  t.is(shell.exitCode, 1, shell.stderr);
  t.regex(shell.stderr, /is linux\/arm\/v7, which dockvm has no build VM for/);
});

test('an arm64 base on a host without arm64\'s QEMU: runAsRoot and shell say in one line what to install, exit 1, nothing written', async (t) => {
  const dir = tempDir(t);
  const base = await aarch64Image(dir, 'arm64', 'v8');
  const missing = /^dockvm: cannot run \/nonexistent\/qemu-would-have-booted, which arm64 build VMs need: install qemu-system-arm \(apt-get install qemu-system-arm\) or set DOCKVM_QEMU_ARM64$/m;
  const build = await runDockvm(['run-as-root', writeSpec(dir, { fromImage: base, runAsRoot: 'uname -m' })], { env: NO_VM });
  t.is(build.exitCode, 1, build.stderr);
  t.regex(build.stderr, missing);
  t.is(build.stderr.trim().split('\n').length, 1, build.stderr);
  t.false(existsSync(join(dir, 'image.tar')));
  const shell = await runDockvm(['shell', base, '--', 'uname', '-m'], { env: NO_VM });
  t.is(shell.exitCode, 1, shell.stderr);
  t.regex(shell.stderr, missing);
});

test('an arm64 base without runAsRoot builds (nothing executes) and the image says linux/arm64/v8, not the host\'s, also when the base names no variant', async (t) => {
  const dir = tempDir(t);
  mkdirSync(join(dir, 'root', 'etc'), { recursive: true });
  writeFileSync(join(dir, 'root', 'etc', 'motd'), 'hello\n');
  for (const variant of ['v8', undefined]) {
    const base = await aarch64Image(dir, 'arm64', variant);
    const build = await runDockvm(['run-as-root', writeSpec(dir, { fromImage: base, copyToRoot: 'root', config: { Cmd: ['/bin/sh'] } })], { env: NO_VM });
    t.is(build.exitCode, 0, build.stderr);
    const image = await openImage(join(dir, 'image.tar'));
    t.like(image.config, { os: 'linux', architecture: 'arm64', variant: 'v8' }, `a base with variant ${variant ?? 'none'}`);
    await image.close();
  }
});

test('a spec architecture that contradicts the base is an error naming the field and the base\'s platform', async (t) => {
  const dir = tempDir(t);
  const base = await aarch64Image(dir, 'arm64');
  const run = await runDockvm(['run-as-root', writeSpec(dir, { fromImage: base, architecture: 'amd64' })], { env: NO_VM });
  t.is(run.exitCode, 1, run.stderr);
  t.regex(run.stderr, /architecture: "amd64" disagrees with fromImage \S+busybox-arm64\.tar, which is linux\/arm64; drop architecture \(the base's is used\) or pick a base of amd64/);
  t.false(existsSync(join(dir, 'image.tar')));
  const agreeing = await runDockvm(['run-as-root', writeSpec(dir, { fromImage: base, architecture: 'arm64' })], { env: NO_VM });
  t.is(agreeing.exitCode, 0, agreeing.stderr);
});

test('VM: a shell that exists but cannot be executed (exec format error) is reported as that, not replaced by the bundled bash', async (t) => {
  const dir = tempDir(t);
  const base = await aarch64Image(dir, 'amd64'); // a config that lies: its binaries are aarch64
  const run = await runDockvm(['run-as-root', writeSpec(dir, { fromImage: base, runAsRoot: 'echo "the script ran"' })]);
  t.is(run.exitCode, 1, run.stderr);
  t.regex(run.stderr, /^dockvm: runAsRoot: the image's \/bin\/bash cannot be executed in the build VM \(exec format error\): it is not a linux\/amd64 program/m);
  t.notRegex(run.stderr, /the script ran/);
  t.false(existsSync(join(dir, 'image.tar')));
});
