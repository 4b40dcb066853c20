// Issue 13, resources: a runAsRoot script that forks without end, takes all memory, fills the disk or
// prints without end. Each is stopped or bounded and reported as what it was, within --timeout; the
// host keeps no QEMU, passt or temp dir of the build, and dockvm's own memory stays bounded while the
// guest floods it. One boot each (each ends its build); serial, since each loads the machine.
import test from 'ava';
import { closeSync, createWriteStream, existsSync, openSync, readFileSync, readSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { debianBaseFixture } from '../fixtures/debian.js';
import { qemuCounter } from '../helpers/qemu-counter.js';
import { errorLines, runDockvm } from '../helpers/peers.js';
import { BASE, alive, baseContext, buildDir, tempRoot } from './helpers.js';

const CLI = fileURLToPath(new URL('../../bin/dockvm.js', import.meta.url));
const TIMEOUT_S = 120; // generous: a build that should fail on its own fails long before

interface Outcome {
  exitCode: number;
  /** dockvm's error lines */
  errors: string[];
  /** bytes of the script's output dockvm passed on */
  outputBytes: number;
  /** dockvm's own peak RSS, KiB (its VmHWM, sampled while it runs; QEMU's is not counted) */
  maxRssKiB: number;
  /** from the start to dockvm's exit, ms */
  elapsedMs: number;
}

interface RunOptions {
  spec?: Record<string, unknown>;
  timeoutS?: number;
  env?: Record<string, string>;
  /** read dockvm's stderr through a pipe at this rate, as a slow `| tee log` would (default: straight into a file) */
  stderrBytesPerSecond?: number;
}

/** run-as-root of `script` (over the Debian base), its stderr into a file. */
async function runAsRoot(t: Parameters<typeof buildDir>[0], script: string, { spec = {}, timeoutS = TIMEOUT_S, env = {}, stderrBytesPerSecond }: RunOptions = {}): Promise<Outcome & { qemu: Awaited<ReturnType<typeof qemuCounter>>; temp: ReturnType<typeof tempRoot>; out: string }> {
  const { dir } = buildDir(t, '');
  const out = join(dir, 'out.tar');
  writeFileSync(join(dir, 'spec.json'), JSON.stringify({ name: 'hostile', fromImage: debianBaseFixture(), runAsRoot: script, output: out, ...spec }));
  const qemu = await qemuCounter(t);
  const temp = tempRoot(t);
  const stderrPath = join(dir, 'stderr');
  const started = Date.now();
  const child = execa('node', [CLI, 'run-as-root', join(dir, 'spec.json'), '--timeout', String(timeoutS)], {
    env: { ...qemu.env, ...temp.env, DEBUG: '', ...env },
    reject: false,
    stdout: 'ignore',
    stderr: stderrBytesPerSecond === undefined ? { file: stderrPath } : 'pipe',
    buffer: false, // else execa stops it at maxBuffer (100 MB), which endless output reaches
    timeout: (timeoutS + 120) * 1000, // a dockvm that does not stop at its own --timeout is killed, and fails the test
  });
  const slowRead = stderrBytesPerSecond === undefined ? undefined : pipeline(child.stderr!, throttle(stderrBytesPerSecond), createWriteStream(stderrPath));
  let maxRssKiB = 0;
  const sampler = setInterval(() => {
    try {
      maxRssKiB = Number(/^VmHWM:\s+(\d+)/m.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))?.[1] ?? maxRssKiB);
    } catch {
      // gone
    }
  }, 200);
  const run = await child.finally(() => clearInterval(sampler));
  await slowRead;
  const elapsedMs = Date.now() - started;
  const stderr = tail(stderrPath, 64 * 1024); // the error is at the end; the output before it may be GiBs
  const errors = errorLines(stderr);
  if (errors.length !== 1) t.log(`stderr ends with: ${stderr.slice(-300)}`);
  return { exitCode: run.exitCode ?? -1, errors, outputBytes: statSync(stderrPath).size, maxRssKiB, elapsedMs, qemu, temp, out };
}

/** Passes bytes on at `bytesPerSecond`, holding each chunk until its time has come. */
function throttle(bytesPerSecond: number): Transform {
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      setTimeout(() => done(null, chunk), (chunk.length / bytesPerSecond) * 1000);
    },
  });
}

/** The last `bytes` of a file, as text. */
function tail(path: string, bytes: number): string {
  const size = statSync(path).size;
  const fd = openSync(path, 'r');
  try {
    const buffer = Buffer.alloc(Math.min(size, bytes));
    readSync(fd, buffer, 0, buffer.length, size - buffer.length);
    return buffer.toString('latin1');
  } finally {
    closeSync(fd);
  }
}

/** What every attack must leave: exit 1, one error line, no output, nothing of the build running or on disk. */
async function leftNothing(t: Parameters<typeof buildDir>[0], r: Awaited<ReturnType<typeof runAsRoot>>, error: RegExp): Promise<void> {
  t.log(`exit ${r.exitCode} after ${(r.elapsedMs / 1000).toFixed(1)} s; dockvm peak RSS ${Math.round(r.maxRssKiB / 1024)} MiB; ${r.outputBytes} bytes of output; ${r.errors.join(' / ')}`);
  t.is(r.exitCode, 1);
  t.is(r.errors.length, 1, r.errors.join('\n'));
  t.regex(r.errors[0] ?? '', error);
  t.false(existsSync(r.out), 'no output');
  t.is(r.qemu.vms(), 1);
  t.false(r.qemu.starts().some(({ pid }) => alive(pid)), 'no QEMU left');
  t.deepEqual(await r.temp.processes(), [], 'no process of the build left');
  t.deepEqual(r.temp.left(), [], 'no temp dir left');
}

// A fork bomb meets the step's process limit in the guest (a pids cgroup: one process per 2 MiB of its memory, or DOCKVM_MAX_PROCESSES) long
// before --timeout: the guest stops it there, and the error says what it was and how to raise the limit.
test.serial('a fork bomb: stopped at the process limit before --timeout, the error saying so, nothing left', async (t) => {
  const r = await runAsRoot(t, 'bomb() { bomb | bomb & }; bomb; sleep 600', { spec: { buildVMMemorySize: 512 } });
  await leftNothing(t, r, /^dockvm: runAsRoot hit the build VM's limit of \d+ processes \(a fork bomb\?\) and was stopped; set DOCKVM_MAX_PROCESSES to raise it \(or give the VM more memory\)$/);
  t.true(r.elapsedMs < TIMEOUT_S * 1000, 'before --timeout');
});

test.serial('DOCKVM_MAX_PROCESSES sets the limit: 40 allows 20 sleeps at once and stops 60', async (t) => {
  const few = await runAsRoot(t, 'for i in $(seq 20); do sleep 2 & done; wait', { env: { DOCKVM_MAX_PROCESSES: '40' } });
  t.is(few.exitCode, 0, few.errors.join('\n'));
  const many = await runAsRoot(t, 'for i in $(seq 60); do sleep 30 & done; wait', { env: { DOCKVM_MAX_PROCESSES: '40' } });
  await leftNothing(t, many, /^dockvm: runAsRoot hit the build VM's limit of 40 processes \(a fork bomb\?\) and was stopped; set DOCKVM_MAX_PROCESSES to raise it \(or give the VM more memory\)$/);
});

test.serial('all of the VM\'s memory: the script is OOM-killed and the error says so', async (t) => {
  const r = await runAsRoot(t, 'head -c 2G /dev/zero | tail -c 2G > /dev/null', { spec: { buildVMMemorySize: 256 } });
  await leftNothing(t, r, /^dockvm: runAsRoot ran out of memory: buildVMMemorySize 256 MiB was too small; set buildVMMemorySize to at least 512$/);
});

test.serial('all of its disk: the diskSize error, naming what to set', async (t) => {
  const r = await runAsRoot(t, 'dd if=/dev/zero of=/fill bs=1M', { spec: { diskSize: 64 } });
  await leftNothing(t, r, /^dockvm: diskSize 64 MiB was too small: the layer needed .*; set diskSize to at least \d+$/);
});

// Its stderr is read at 8 MB/s through a pipe, as `dockvm … 2>&1 | tee log` on a busy CI machine reads
// it: the guest prints far faster, so dockvm must slow the guest down rather than hold what the reader
// has not taken (before it did, the peak grew by the difference: 6.8 GB in 40 s here, 1.3-2 GB in CI).
test.serial('endless output to a slow reader: stopped at --timeout, dockvm\'s memory bounded while it streams', async (t) => {
  const r = await runAsRoot(t, 'yes "endless output from a hostile script"', { timeoutS: 40, stderrBytesPerSecond: 8e6 });
  await leftNothing(t, r, /^dockvm: the build took longer than --timeout 40 s; the VM was stopped$/);
  t.true(r.outputBytes > 1 << 20, 'the output streamed');
  t.log(`dockvm's peak RSS ${Math.round(r.maxRssKiB / 1024)} MiB with ${Math.round(r.outputBytes / 2 ** 20)} MiB streamed`);
  t.true(r.maxRssKiB < 512 * 1024, `dockvm's peak RSS ${r.maxRssKiB} KiB, bound 512 MiB`);
});

test.serial('dockvm build: a RUN step that never ends is stopped at --timeout, the error naming it, nothing left', async (t) => {
  const { dir, ctx, out } = buildDir(t, `FROM ${BASE}\nRUN while :; do :; done\n`);
  const qemu = await qemuCounter(t);
  const temp = tempRoot(t);
  const started = Date.now();
  const run = await runDockvm(['build', '--timeout', '30', '--network=none', '--build-context', baseContext(), '-t', 'localhost/dockvm-test/forever:1', '-o', out, ctx], { env: { ...qemu.env, ...temp.env } });
  t.log(`exit ${run.exitCode} after ${((Date.now() - started) / 1000).toFixed(1)} s`);
  t.is(run.exitCode, 1, run.stderr);
  const errors = errorLines(run.stderr);
  t.deepEqual(errors, ['dockvm: the build took longer than --timeout 30 s; its VM was stopped']);
  t.deepEqual(readdirSync(dir), ['ctx'], 'no output');
  t.false(qemu.starts().some(({ pid }) => alive(pid)), 'no QEMU left');
  t.deepEqual(await temp.processes(), [], 'no process of this build left');
  t.deepEqual(temp.left(), [], 'no temp dir left');
});

test.serial('dockvm build: a RUN fork bomb is stopped at the process limit before --timeout, the error naming the step and the limit, nothing left', async (t) => {
  const { dir, ctx, out } = buildDir(t, `FROM ${BASE}\nRUN bomb() { bomb | bomb & }; bomb; sleep 600\n`);
  const qemu = await qemuCounter(t);
  const temp = tempRoot(t);
  const started = Date.now();
  const run = await runDockvm(['build', '--timeout', String(TIMEOUT_S), '--network=none', '--build-context', baseContext(), '-t', 'localhost/dockvm-test/bomb:1', '-o', out, ctx], { env: { ...qemu.env, ...temp.env } });
  const elapsedMs = Date.now() - started;
  t.log(`exit ${run.exitCode} after ${(elapsedMs / 1000).toFixed(1)} s`);
  t.is(run.exitCode, 1, run.stderr);
  const errors = errorLines(run.stderr);
  t.is(errors.length, 1, run.stderr);
  t.regex(errors[0]!, /^dockvm: \S+Containerfile:2: RUN bomb\(\) .*: hit the build VM's limit of \d+ processes \(a fork bomb\?\) and was stopped; set DOCKVM_MAX_PROCESSES to raise it \(or give the VM more memory\)$/);
  t.true(elapsedMs < TIMEOUT_S * 1000, 'before --timeout');
  t.deepEqual(readdirSync(dir), ['ctx'], 'no output');
  t.false(qemu.starts().some(({ pid }) => alive(pid)), 'no QEMU left');
  t.deepEqual(await temp.processes(), [], 'no process of this build left');
  t.deepEqual(temp.left(), [], 'no temp dir left');
});
