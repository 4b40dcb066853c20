// One registry of what dockvm undoes before it exits (src/cleanup.ts): temp dirs, outputs not yet in
// place, QEMU processes. Each case runs in a child process, which is then ended the way the title says.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';

const CLEANUP = fileURLToPath(new URL('../src/cleanup.ts', import.meta.url));

/**
 * Run `body` (an ES module's code, with createTempDir, removeOnExit, killOnExit, installSignalHandlers in
 * scope) in a child; it prints "ready" and the paths it registered; then `end` ends it.
 */
async function child(t: import('ava').ExecutionContext, body: string, end?: NodeJS.Signals) {
  const dir = await mkdtemp(join(tmpdir(), 'dockvm-cleanup-test-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const code = `import { createTempDir, removeOnExit, killOnExit, installSignalHandlers } from ${JSON.stringify(CLEANUP)};\n${body}`;
  const proc = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    env: { ...process.env, DOCKVM_TMPDIR: dir, SCRATCH: dir },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.teardown(() => void proc.kill('SIGKILL'));
  let stdout = '';
  let stderr = '';
  proc.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const ready = new Promise<string[]>((resolve) =>
    proc.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
      if (stdout.includes('ready\n')) resolve(stdout.slice(0, stdout.indexOf('ready\n')).split('\n').filter(Boolean));
    }),
  );
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  const paths = await Promise.race([ready, exited.then(() => [] as string[])]);
  t.true(paths.length > 0, `the child got ready (stderr: ${stderr})`);
  t.true(paths.every((path) => existsSync(path)), 'what it registered is there while it runs');
  if (end) proc.kill(end);
  return { paths, ...(await exited), stderr: () => stderr };
}

const HOLD = `
const dir = await createTempDir('held');
const output = process.env.SCRATCH + '/output.tmp';
(await import('node:fs')).writeFileSync(output, 'half');
removeOnExit(output);
console.log(dir.path); console.log(output); console.log('ready');
`;

test('a library caller killed by SIGTERM: temp dir and unfinished output removed, and it dies of the signal', async (t) => {
  const result = await child(t, `${HOLD}setInterval(() => {}, 1000);`, 'SIGTERM');
  t.is(result.signal, 'SIGTERM', 'the guard re-raised the signal after cleaning up');
  t.deepEqual(result.paths.filter((path) => existsSync(path)), []);
});

test('process.exit while things are registered removes them; a released path stays', async (t) => {
  const result = await child(t, `${HOLD}
const kept = process.env.SCRATCH + '/kept';
(await import('node:fs')).writeFileSync(kept, 'done');
removeOnExit(kept)();
setTimeout(() => process.exit(3), 100);`);
  t.is(result.code, 3);
  t.deepEqual(result.paths.filter((path) => existsSync(path)), []);
  t.true(existsSync(join(result.paths[1]!, '..', 'kept')), 'released, so left alone');
});

test('the CLI handlers: SIGINT removes what is registered, kills a registered process, says so and exits 130', async (t) => {
  const result = await child(
    t,
    `installSignalHandlers();
const sleeper = (await import('node:child_process')).spawn('sleep', ['60'], { stdio: 'ignore' });
killOnExit(() => sleeper.pid);
console.log('/proc/' + sleeper.pid);
${HOLD}setInterval(() => {}, 1000);`,
    'SIGINT',
  );
  t.is(result.code, 130);
  t.regex(result.stderr(), /dockvm: interrupted; cleaned up/);
  const [sleeper, ...paths] = result.paths;
  t.deepEqual(paths.filter((path) => existsSync(path)), []);
  // killed: gone, or a zombie until its parent's parent reaps it
  const state = existsSync(sleeper!) ? readFileSync(`${sleeper}/stat`, 'utf8').split(') ')[1]![0] : 'gone';
  t.true(state === 'gone' || state === 'Z', `sleep is ${state}`);
});
