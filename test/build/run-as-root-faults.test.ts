// run-as-root when things go wrong: each gets a clear error naming what to change, exit 1, no output
// file, and no QEMU process or temp directory left behind. Real VM boots (TCG here), one per fault.
import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { debianBaseFixture } from '../fixtures/debian.js';
import { runDockvm } from '../helpers/peers.js';
import { qemuCounter } from '../helpers/qemu-counter.js';
import { HANG_DEADLINE_MS } from '../helpers/wait.js';

const BIN = new URL('../../bin/dockvm.js', import.meta.url).pathname;

interface Setup {
  dir: string;
  spec: string;
  /** dockvm's TMPDIR for this test: empty afterwards, or dockvm left something behind */
  tmp: string;
}

function setup(t: { teardown(fn: () => void): void }, spec: Record<string, unknown>): Setup {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-faults-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const tmp = join(dir, 'tmp');
  mkdirSync(tmp);
  const path = join(dir, 'spec.json');
  writeFileSync(path, JSON.stringify({ name: 'faults', fromImage: debianBaseFixture(), output: 'out.tar', ...spec }));
  return { dir, spec: path, tmp };
}

async function qemuRunning(): Promise<string[]> {
  const { stdout } = await execa('pgrep', ['-a', 'qemu-system'], { reject: false });
  return stdout.split('\n').filter(Boolean);
}

function assertClean(t: { false(v: boolean, m?: string): void; deepEqual(a: unknown, b: unknown, m?: string): void }, s: Setup): void {
  t.false(existsSync(join(s.dir, 'out.tar')), 'no output file');
  t.deepEqual(readdirSync(s.dir).filter((name) => name !== 'spec.json' && name !== 'tmp'), [], 'no partial files beside the output');
  t.deepEqual(readdirSync(s.tmp), [], 'no temp files left');
}

test.serial('a failing script: exit 1, its exit code and the tail of its stderr', async (t) => {
  const s = setup(t, { runAsRoot: 'echo preparing\necho "something broke" >&2\nexit 3' });
  const run = await runDockvm(['run-as-root', s.spec], { env: { TMPDIR: s.tmp } });
  t.is(run.exitCode, 1);
  t.regex(run.stderr, /dockvm: runAsRoot failed \(exit code 3\); its stderr ends with:\nsomething broke\n/);
  assertClean(t, s);
});

test.serial('a layer bigger than diskSize: the error names diskSize, what was needed and what to set', async (t) => {
  const s = setup(t, { diskSize: 16, runAsRoot: 'head -c 25000000 /dev/urandom > /big' });
  const run = await runDockvm(['run-as-root', s.spec], { env: { TMPDIR: s.tmp } });
  t.is(run.exitCode, 1);
  t.regex(run.stderr, /^dockvm: diskSize 16 MiB was too small: the layer needed 2\d MiB; set diskSize to at least \d+\n/m);
  assertClean(t, s);
});

test.serial('a script that needs more memory than buildVMMemorySize: the error says so', async (t) => {
  // tail -n 1 keeps the last line in memory, and a newline-free input is one line
  const s = setup(t, { buildVMMemorySize: 128, runAsRoot: 'head -c 400000000 /dev/zero | tail -n 1 > /dev/null' });
  const run = await runDockvm(['run-as-root', s.spec], { env: { TMPDIR: s.tmp } });
  t.is(run.exitCode, 1);
  t.regex(run.stderr, /runAsRoot ran out of memory: buildVMMemorySize 128 MiB was too small; set buildVMMemorySize to at least 256/);
  assertClean(t, s);
});

test.serial('--timeout stops the VM and says so', async (t) => {
  // The script would run for 600 s, twice this test's own 5 min timeout: finishing at all shows that
  // dockvm did not wait for it.
  const s = setup(t, { runAsRoot: 'sleep 600' });
  const qemu = await qemuCounter(t);
  const run = await runDockvm(['run-as-root', s.spec, '--timeout', '8'], { env: { TMPDIR: s.tmp, ...qemu.env } });
  t.is(run.exitCode, 1);
  t.regex(run.stderr, /the build took longer than --timeout 8 s; the VM was stopped/);
  t.is(qemu.vms(), 1);
  assertClean(t, s);
  t.deepEqual((await qemuRunning()).filter((line) => line.includes(s.tmp)), []);
});

test.serial('Ctrl-C while the script runs: no QEMU, no temp files, exit 130', async (t) => {
  const s = setup(t, { runAsRoot: 'echo started; sleep 600' });
  const child = spawn(process.execPath, [BIN, 'run-as-root', s.spec], { env: { ...process.env, TMPDIR: s.tmp }, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  const started = new Promise<void>((resolve) =>
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      if (stderr.includes('started')) resolve();
    }),
  );
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  await started;
  const qemu = (await qemuRunning()).filter((line) => line.includes(s.tmp));
  t.is(qemu.length, 1, 'the VM was running');
  child.kill('SIGINT');
  const hang = new Promise<'hung'>((resolve) => setTimeout(resolve, HANG_DEADLINE_MS, 'hung').unref());
  t.is(await Promise.race([exited, hang]), 130);
  t.deepEqual((await qemuRunning()).filter((line) => line.includes(s.tmp)), []);
  assertClean(t, s);
});

test('a spec with every kind of mistake: all its errors at once, exit 1, no VM', async (t) => {
  const s = setup(t, { name: 'Bad Name', diskSize: 'big', nmae: 1, fromImageTag: 'x', runAsRoot: 5 });
  const qemu = await qemuCounter(t);
  const run = await runDockvm(['run-as-root', s.spec], { env: { TMPDIR: s.tmp, ...qemu.env } });
  t.is(run.exitCode, 1);
  t.deepEqual(qemu.starts(), [], 'QEMU never started, not even for its version');
  t.regex(run.stderr, /^dockvm: spec .*spec\.json has 5 problems:\n/);
  for (const field of ['name:', 'diskSize:', 'nmae: unknown field', 'fromImageName:', 'runAsRoot:']) t.true(run.stderr.includes(`  - ${field}`), `${field} in ${run.stderr}`);
  t.false(run.stderr.includes('    at '), 'no stack trace');
  assertClean(t, s);
});
