// npm run bench:registry — `dockvm pull` and `dockvm push` against `skopeo copy` of the same image
// through a loopback docker-registry, side by side in one run. Prints median wall times and their ratio
// (goal <= 1.0 for both).
//
// The image is the Debian fixture (.cache/fixtures/debian.tar, built by scripts/setup); without it, a
// synthetic image of about 200 MB is generated once into .cache/fixtures (and the output says so).
// Pushes go to a fresh registry each run (nothing to skip or mount, for either tool); pulls read an
// image skopeo pushed, and write an uncompressed docker-archive, as `skopeo copy … docker-archive:` does,
// downloading every layer (DOCKVM_TAR_CACHE=off).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeDockerArchive } from '../src/transport/docker-archive-writer.js';
import { sha256 } from '../src/image/digest.js';
import type { Image, Layer } from '../src/image/image.js';
import { MediaType } from '../src/image/media-types.js';
import { TarWriter } from '../src/layer/tar.js';
import { Readable } from 'node:stream';
import { DigestingStream } from '../src/image/digest.js';
import { pull } from '../src/cli/pull.js';
import { push } from '../src/cli/push.js';
import { startRegistry, timedCall, type BenchRegistry } from './lib/bench.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url)); // dist/scripts/ → the repository
const FIXTURES = process.env.DOCKVM_FIXTURES || join(REPO, '.cache', 'fixtures');
const CLI = join(REPO, 'bin', 'dockvm.js');
const RUNS = Number(process.env.BENCH_RUNS ?? 3);

/** A registry in a temp dir of its own, removed when it stops. */
async function startTempRegistry(): Promise<BenchRegistry> {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-bench-registry-'));
  const registry = await startRegistry(dir);
  return {
    host: registry.host,
    stop: async () => {
      await registry.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Seconds a command takes; a failure stops the benchmark with its stderr. */
function timed(command: string, args: string[]): number {
  const start = process.hrtime.bigint();
  const result = spawnSync(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed: ${result.stderr.toString().trim()}`);
  return seconds;
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

/** A synthetic image of about 200 MB: one large layer of compressible text-like files, two small ones. */
async function syntheticImage(path: string): Promise<void> {
  const words = ['alpha', 'beta', 'gamma', 'delta', 'lib', 'usr', 'share', 'config', 'value', '0x1f', 'dockvm', '\n', ' ', '=', '/'];
  let x = 2463534242;
  const next = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
  const layerTar = async (files: number, size: number): Promise<Buffer> => {
    const writer = new TarWriter();
    const chunks: Buffer[] = [];
    const done = (async () => {
      for await (const chunk of writer.stream) chunks.push(chunk as Buffer);
    })();
    for (let i = 0; i < files; i++) {
      const parts: string[] = [];
      let length = 0;
      while (length < size) {
        const word = words[Math.floor(next() * words.length)]!;
        parts.push(word);
        length += word.length;
      }
      const body = Buffer.from(parts.join(''));
      await writer.add({ path: `data/f${i}`, type: 'file', mode: 0o644, uid: 0, gid: 0, size: body.length, mtime: 1 }, body);
    }
    writer.finish();
    await done;
    return Buffer.concat(chunks);
  };
  const tars = [await layerTar(400, 500_000), await layerTar(20, 10_000), await layerTar(5, 1000)];
  const diffIds = tars.map((tar) => sha256(tar));
  const rawConfig = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: diffIds } }));
  const layers: Layer[] = tars.map((tar, i) => ({
    diffId: diffIds[i]!,
    blob: async () => ({ mediaType: MediaType.DockerLayer, digest: diffIds[i]!, size: tar.length }),
    openBlob: async () => Readable.from([tar]),
    openTar: async () => Readable.from([tar]).pipe(new DigestingStream({ expect: diffIds[i]! })),
  }));
  const image: Image = { rawConfig, config: JSON.parse(rawConfig.toString()), configDigest: sha256(rawConfig), layers, repoTags: [] };
  await writeDockerArchive([{ image, tags: ['bench/synthetic:1'] }], path);
}

async function main(): Promise<void> {
  // Every pull downloads every layer, as skopeo's does: no tars from dockvm's cache (the children inherit it).
  process.env.DOCKVM_TAR_CACHE = 'off';
  let archive = join(FIXTURES, 'debian.tar');
  let label = 'the Debian fixture (debian.tar: base + two layers)';
  if (!existsSync(archive)) {
    archive = join(FIXTURES, 'registry-bench-synthetic.tar');
    label = 'a synthetic ~200 MB image (the Debian fixture is missing: run scripts/setup to build it)';
    if (!existsSync(archive)) {
      mkdirSync(FIXTURES, { recursive: true });
      await syntheticImage(`${archive}.tmp.tar`);
      renameSync(`${archive}.tmp.tar`, archive);
    }
  }
  const work = mkdtempSync(join(tmpdir(), 'dockvm-bench-registry-work-'));
  const size = (statSync(archive).size / 1e6).toFixed(1);
  console.log(`registry benchmark: ${label}, ${size} MB, ${RUNS} run(s) each side, median wall time`);
  try {
    // Push: a fresh registry per run, so that neither tool finds blobs to skip or mount.
    const pushTimes = { dockvm: [] as number[], skopeo: [] as number[] };
    for (let run = 0; run < RUNS; run++) {
      for (const tool of run % 2 === 0 ? (['dockvm', 'skopeo'] as const) : (['skopeo', 'dockvm'] as const)) {
        const registry = await startTempRegistry();
        try {
          const target = `docker://${registry.host}/bench/image:${tool}`;
          pushTimes[tool].push(
            tool === 'dockvm'
              ? timed('node', [CLI, 'push', archive, target])
              : timed('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `docker-archive:${archive}`, target]),
          );
        } finally {
          await registry.stop();
        }
      }
    }
    const pushInProcess: number[] = [];
    for (let run = 0; run < RUNS; run++) {
      const registry = await startTempRegistry();
      try {
        pushInProcess.push(await timedCall(() => push(archive, `docker://${registry.host}/bench/image:lib`)));
      } finally {
        await registry.stop();
      }
    }
    // Pull: an image skopeo pushed, to an uncompressed docker-archive.
    const pullTimes = { dockvm: [] as number[], skopeo: [] as number[] };
    const pullInProcess: number[] = [];
    const registry = await startTempRegistry();
    try {
      const source = `docker://${registry.host}/bench/image:1`;
      timed('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `docker-archive:${archive}`, source]);
      for (let run = 0; run < RUNS; run++) {
        for (const tool of run % 2 === 0 ? (['dockvm', 'skopeo'] as const) : (['skopeo', 'dockvm'] as const)) {
          const out = join(work, `${tool}.tar`);
          rmSync(out, { force: true });
          pullTimes[tool].push(
            tool === 'dockvm'
              ? timed('node', [CLI, 'pull', source, '-o', out])
              : timed('skopeo', ['copy', '--quiet', '--src-tls-verify=false', source, `docker-archive:${out}:bench/image:1`]),
          );
        }
        const out = join(work, 'lib.tar');
        rmSync(out, { force: true });
        pullInProcess.push(await timedCall(() => pull(source, out)));
      }
    } finally {
      await registry.stop();
    }
    const line = (what: string, times: { dockvm: number[]; skopeo: number[] }) => {
      const [d, s] = [median(times.dockvm), median(times.skopeo)];
      const all = (values: number[]) => values.map((v) => v.toFixed(2)).join(' ');
      console.log(`${what.padEnd(5)} dockvm ${d.toFixed(2)} s  skopeo ${s.toFixed(2)} s  ratio ${(d / s).toFixed(2)}   (dockvm: ${all(times.dockvm)}; skopeo: ${all(times.skopeo)})`);
    };
    line('pull', pullTimes);
    line('push', pushTimes);
    // The same operations called in-process: what the CLI's Node start-up and module loading cost.
    const inProcess = (what: string, times: number[], skopeo: number[]) =>
      console.log(`${what.padEnd(5)} dockvm in-process ${median(times).toFixed(2)} s  ratio ${(median(times) / median(skopeo)).toFixed(2)}   (${times.map((v) => v.toFixed(2)).join(' ')})`);
    inProcess('pull', pullInProcess, pullTimes.skopeo);
    inProcess('push', pushInProcess, pushTimes.skopeo);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
