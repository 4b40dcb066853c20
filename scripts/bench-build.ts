// npm run bench:build — dockvm build of a 5-step Containerfile over the Debian fixture (debian-base.tar),
// side by side in one run with buildah (root, native) for scale:
//
//   bare boot   a build VM booted and shut down, nothing run: what any build that misses pays once
//   cold        dockvm build with an empty build cache (the base's squashfs image already cached)
//   unchanged   the same build again: every step from the build cache, no VM
//   last COPY   the last step's input changed: the four steps before it cached, one boot for the last
//   buildah     buildah bud --format docker --isolation chroot (overlay store, the base already in it),
//               with --layers --no-cache (one layer per step, nothing reused), then buildah push to a
//               docker-archive, as dockvm writes one
//
// Goals (issue 10): one VM boot per stage; unchanged <= 0.1 of cold; last COPY <= bare boot + that step.
// BENCH_RUNS (default 1) repeats each measurement and reports the median.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { execa } from 'execa';
import { buildContainerfile, type BuildResult } from '../src/executor/build.js';
import { packageRoot } from '../src/vm/paths.js';
import { startVm } from '../src/vm/index.js';

const FIXTURES = process.env.DOCKVM_FIXTURES || join(packageRoot(), '.cache', 'fixtures');
const BASE_ARCHIVE = join(FIXTURES, 'debian-base.tar');
const BASE_NAME = 'localhost/dockvm-fixture/debian-base:bookworm';
const RUNS = Number(process.env.BENCH_RUNS ?? 1);

const CONTAINERFILE = `FROM ${BASE_NAME}
RUN useradd -m -u 1000 app
COPY app/ /opt/app/
RUN chown -R app:app /opt/app && echo built > /opt/app/built
WORKDIR /opt/app
COPY config.txt /opt/app/config.txt
`;

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};

async function timed<T>(fn: () => Promise<T>): Promise<{ seconds: number; result: T }> {
  await execa('sync');
  const start = performance.now();
  const result = await fn();
  return { seconds: (performance.now() - start) / 1000, result };
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'dockvm-bench-build-'));
  try {
    const context = join(dir, 'context');
    await mkdir(join(context, 'app', 'lib'), { recursive: true });
    await writeFile(join(context, 'Containerfile'), CONTAINERFILE);
    for (let i = 0; i < 50; i++) await writeFile(join(context, 'app', 'lib', `module-${i}.js`), `export const n = ${i};\n`.repeat(40));
    await writeFile(join(context, 'app', 'index.js'), 'console.log("hello");\n');
    let config = 0;
    const nextConfig = () => writeFile(join(context, 'config.txt'), `revision=${++config}\n`);
    await nextConfig();

    const build = (cacheDir: string, output: string) =>
      buildContainerfile({
        contextDir: context,
        tags: ['localhost/bench/build:1'],
        output: join(dir, output),
        buildContexts: { [BASE_NAME]: `docker-archive:${BASE_ARCHIVE}` },
        cache: { dir: cacheDir },
      });
    const boots = (result: BuildResult) => `${result.vmBoots} boot(s), ${result.steps.filter((s) => s.cache !== null).length}/${result.steps.length} steps cached`;

    // Warm-up: kernel, initramfs, the base's squashfs image, buildah's copy of the base.
    process.stderr.write('warming up (kernel, initramfs, squashfs of the base, buildah store)…\n');
    await build(join(dir, 'warmup-cache'), 'warmup.tar');
    const buildahRoot = join(dir, 'buildah');
    const buildah = (args: string[]) => execa('buildah', ['--root', join(buildahRoot, 'root'), '--runroot', join(buildahRoot, 'run'), '--storage-driver', 'overlay', ...args], { stdin: 'ignore' });
    const haveBuildah = process.getuid?.() === 0 && (await execa('buildah', ['--version'], { reject: false })).exitCode === 0;
    if (haveBuildah) await buildah(['pull', '--quiet', `docker-archive:${BASE_ARCHIVE}`]);

    const rows: { name: string; seconds: number[]; note: string }[] = [];
    const row = (name: string) => {
      const found = rows.find((r) => r.name === name);
      if (found) return found;
      const made = { name, seconds: [] as number[], note: '' };
      rows.push(made);
      return made;
    };
    for (let run = 0; run < RUNS; run++) {
      const bare = await timed(async () => {
        const vm = await startVm({});
        await vm.shutdown();
      });
      row('bare boot').seconds.push(bare.seconds);

      const cacheDir = join(dir, `cache-${run}`);
      const cold = await timed(() => build(cacheDir, `cold-${run}.tar`));
      Object.assign(row('dockvm cold'), { note: boots(cold.result) }).seconds.push(cold.seconds);
      const unchanged = await timed(() => build(cacheDir, `unchanged-${run}.tar`));
      Object.assign(row('dockvm unchanged'), { note: boots(unchanged.result) }).seconds.push(unchanged.seconds);
      await nextConfig();
      const changed = await timed(() => build(cacheDir, `changed-${run}.tar`));
      Object.assign(row('dockvm last COPY changed'), { note: boots(changed.result) }).seconds.push(changed.seconds);

      if (haveBuildah) {
        const archive = join(dir, `buildah-${run}.tar`);
        const bud = await timed(async () => {
          await buildah(['bud', '--quiet', '--format', 'docker', '--isolation', 'chroot', '--layers', '--no-cache', '-t', `bench:${run}`, context]);
          await buildah(['push', '--quiet', `bench:${run}`, `docker-archive:${archive}:bench:${run}`]);
        });
        Object.assign(row('buildah bud + push'), { note: 'native, root, its base already in its store' }).seconds.push(bud.seconds);
      }
    }

    const cold = median(row('dockvm cold').seconds);
    const [load] = loadavg();
    process.stdout.write(`\ndockvm build, 5 layer steps over debian-base (${cpus().length} CPUs, load ${load!.toFixed(1)}, ${RUNS} run(s), median)\n\n`);
    process.stdout.write(`${'run'.padEnd(28)}${'seconds'.padStart(9)}${'x cold'.padStart(9)}  notes\n`);
    for (const { name, seconds, note } of rows) {
      const value = median(seconds);
      process.stdout.write(`${name.padEnd(28)}${value.toFixed(2).padStart(9)}${(value / cold).toFixed(3).padStart(9)}  ${note}\n`);
    }
    if (!haveBuildah) process.stdout.write('\n(buildah: not run; it needs root and the buildah package)\n');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
