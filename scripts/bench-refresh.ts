// npm run bench:refresh — how long a no-op `dockvm refresh` takes (nothing moved: the nightly common case).
// Goals: one spec <= 1.0 s; 20 specs sharing one base with --jobs 2 <= 5 s, both wall time of the CLI as
// cron runs it (Node start-up included). In-process times of refresh() are printed beside them.
//
// Setup, not timed: a loopback docker-registry, a small base pushed under :stable, one spec with a
// runAsRoot script (one VM boot to build it) and 20 specs with a copyToRoot directory each (built on the
// host: the no-op path never looks further than the lock, the base digest and the inputs hash).
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runAsRoot } from '../src/executor/run-as-root.js';
import { push } from '../src/cli/push.js';
import { refresh, type RefreshOptions } from '../src/refresh/refresh.js';
import { checkSpec } from '../src/spec/load.js';
import { startRegistry, timedCall } from './lib/bench.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url)); // dist/scripts/ → the repository
const CLI = join(REPO, 'bin', 'dockvm.js');
const RUNS = Number(process.env.BENCH_RUNS ?? 5);
const MANY = 20;

function writeJson(path: string, value: unknown): string {
  writeFileSync(path, `${JSON.stringify(value, null, 2)}\n`);
  return path;
}

/** Wall seconds of `node bin/dockvm.js ARGS`, which must exit 0. */
function timedCli(args: string[], cwd: string, env: NodeJS.ProcessEnv, expectNoOp = true): number {
  const start = process.hrtime.bigint();
  const result = spawnSync('node', [CLI, ...args], { cwd, env, encoding: 'utf8' });
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  if (result.status !== 0) throw new Error(`dockvm ${args.join(' ')} exited ${result.status}: ${result.stderr}`);
  if (expectNoOp && /rebuilt|failed/.test(result.stderr)) throw new Error(`expected a no-op, got: ${result.stderr}`);
  return seconds;
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[values.length >> 1]!;

async function main(): Promise<void> {
  const dir = mkdtempSync(join(process.env.DOCKVM_TMPDIR ?? tmpdir(), 'dockvm-bench-refresh-'));
  const registry = await startRegistry(dir);
  try {
    const env = { ...process.env, REGISTRY_AUTH_FILE: join(dir, 'no-auth.json'), DOCKER_CONFIG: join(dir, 'no-docker') };
    const options: RefreshOptions = { authFiles: [join(dir, 'no-auth.json')] };
    // The base: a few files, pushed under :stable.
    mkdirSync(join(dir, 'base-root/etc'), { recursive: true });
    writeFileSync(join(dir, 'base-root/etc/base-version'), 'v1\n');
    const baseSpec = checkSpec({ name: 'bench/base', tag: 'v1', copyToRoot: 'base-root', output: 'base.tar' }, join(dir, 'base.json'));
    await runAsRoot(baseSpec);
    const base = `docker://${registry.host}/bench/base:stable`;
    await push(join(dir, 'base.tar'), base, options);

    const specs = join(dir, 'specs');
    for (let i = 0; i < MANY; i++) {
      mkdirSync(join(specs, `root-${i}/srv`), { recursive: true });
      for (let f = 0; f < 20; f++) writeFileSync(join(specs, `root-${i}/srv/file-${f}`), `spec ${i} file ${f}\n`.repeat(50));
      writeJson(join(specs, `app-${String(i).padStart(2, '0')}.json`), { name: `bench/app-${i}`, tag: '1', fromImage: base, copyToRoot: `root-${i}`, output: `app-${i}.tar` });
    }
    const manySpecs = Array.from({ length: MANY }, (_, i) => `app-${String(i).padStart(2, '0')}.json`);
    const one = writeJson(join(dir, 'one.json'), { name: 'bench/one', tag: '1', fromImage: base, runAsRoot: 'echo hello > /srv-hello', output: 'one.tar' });

    process.stderr.write('setup: building 1 spec in a VM and 20 on the host…\n');
    for (const results of [await refresh([one], options), await refresh(manySpecs.map((name) => join(specs, name)), { ...options, jobs: 2 })]) {
      const failed = results.filter((result) => result.status !== 'rebuilt');
      if (failed.length > 0) throw new Error(`setup failed: ${JSON.stringify(failed)}`);
    }

    const startup: number[] = [];
    const oneCli: number[] = [];
    const manyCli: number[] = [];
    const oneCall: number[] = [];
    const manyCall: number[] = [];
    for (let run = 0; run < RUNS; run++) {
      startup.push(timedCli(['--version'], dir, env, false));
      oneCli.push(timedCli(['refresh', 'one.json'], dir, env));
      manyCli.push(timedCli(['refresh', ...manySpecs, '--jobs', '2'], specs, env));
      oneCall.push(await timedCall(() => refresh([one], options)));
      manyCall.push(await timedCall(() => refresh(manySpecs.map((name) => join(specs, name)), { ...options, jobs: 2 })));
    }
    const row = (label: string, cli: number[], call: number[], goal: number) =>
      `${label.padEnd(34)} ${median(cli).toFixed(3).padStart(7)} s  ${median(call).toFixed(3).padStart(7)} s   ${median(cli) <= goal ? 'ok' : 'OVER'} (goal <= ${goal.toFixed(1)} s)`;
    console.log(`no-op dockvm refresh, median of ${RUNS} runs       CLI wall   in-process   (load average ${loadavg()[0]!.toFixed(1)})`);
    console.log(`${'dockvm --version (start-up alone)'.padEnd(34)} ${median(startup).toFixed(3).padStart(7)} s`);
    console.log(row('1 spec (runAsRoot)', oneCli, oneCall, 1.0));
    console.log(row(`${MANY} specs, one base, --jobs 2`, manyCli, manyCall, 5.0));
  } finally {
    await registry.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
