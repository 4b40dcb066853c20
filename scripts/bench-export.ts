// npm run bench:export — `dockvm export` (native engine) against `podman create` + `podman export` of
// the same image, on three images: a small synthetic one, the Debian fixture (scripts/setup builds it)
// and a synthetic 1 GB one (generated here once, into .cache/fixtures). Prints wall times, their ratio
// (goal <= 1.0) and dockvm's peak RSS (goal <= 150 MB, the same small or large).
//
// The images are put into podman's storage with skopeo under a unique tag (not timed, like podman load)
// and removed at the end. Each side runs RUNS times on a warm page cache; the median is printed.
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { encodeHeader, type TarEntry } from '../src/layer/tar.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url)); // dist/scripts/ → the repository
const FIXTURES = process.env.DOCKVM_FIXTURES || join(REPO, '.cache', 'fixtures');
const RUNS = Number(process.env.BENCH_RUNS ?? 3);

// ---------------------------------------------------------------------------------------------------
// Synthetic images: many files of varied sizes in several layers, with whiteouts, an opaque directory,
// replaced files and hard links. Deterministic (a fixed xorshift seed), so every machine builds the same.

class Random {
  #x: number;
  constructor(seed: number) {
    this.#x = seed >>> 0 || 1;
  }
  next(): number {
    let x = this.#x;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#x = x >>> 0;
    return this.#x / 2 ** 32;
  }
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }
}

const POOL_SIZE = 16 << 20;

function contentPool(): Buffer {
  const pool = Buffer.alloc(POOL_SIZE);
  const random = new Random(42);
  for (let i = 0; i < POOL_SIZE; i += 4) pool.writeUInt32LE(Math.floor(random.next() * 2 ** 32), i);
  return pool;
}

/** Streams one tar to a file with dockvm's header encoder, hashing what it writes. */
class TarFile {
  readonly #fd: number;
  readonly #hash = createHash('sha256');
  size = 0;
  constructor(readonly path: string) {
    this.#fd = openSync(path, 'w');
  }
  write(data: Buffer): void {
    writeSync(this.#fd, data);
    this.#hash.update(data);
    this.size += data.length;
  }
  add(entry: TarEntry, body?: Buffer): void {
    for (const block of encodeHeader(entry)) this.write(block);
    if (body && body.length > 0) {
      this.write(body);
      const pad = (512 - (body.length % 512)) % 512;
      if (pad) this.write(Buffer.alloc(pad));
    }
  }
  finish(): string {
    this.write(Buffer.alloc(1024));
    closeSync(this.#fd);
    return this.#hash.digest('hex');
  }
}

const entry = (path: string, type: TarEntry['type'], size = 0, extra: Partial<TarEntry> = {}): TarEntry => ({
  path,
  type,
  mode: type === 'directory' ? 0o755 : type === 'symlink' ? 0o777 : 0o644,
  uid: 0,
  gid: 0,
  size,
  mtime: 1_700_000_000,
  ...extra,
});

/** Build a docker-archive of `layers` layers totalling about `bytes`, with `files` small files among large ones. */
function buildSynthetic(path: string, repoTag: string, bytes: number, files: number, layers = 4): void {
  const pool = contentPool();
  const random = new Random(7);
  const work = mkdtempSync(join(tmpdir(), 'dockvm-bench-synthetic-'));
  try {
    const layerFiles: { name: string; diffId: string; path: string }[] = [];
    const perLayerBytes = bytes / layers;
    const perLayerFiles = Math.ceil(files / layers);
    const dirs = 64;
    for (let layer = 0; layer < layers; layer++) {
      const tar = new TarFile(join(work, `layer-${layer}.tar`));
      const body = (size: number) => {
        if (size > POOL_SIZE) throw new RangeError(`synthetic files are at most ${POOL_SIZE} bytes`);
        const at = random.int(0, POOL_SIZE - 1);
        if (at + size <= POOL_SIZE) return pool.subarray(at, at + size);
        return Buffer.concat([pool.subarray(at), pool.subarray(0, size - (POOL_SIZE - at))]);
      };
      const file = (p: string, size: number) => tar.add(entry(p, 'file', size), body(size));
      tar.add(entry('data', 'directory'));
      for (let d = 0; d < dirs; d++) tar.add(entry(`data/d${d}`, 'directory'));
      if (layer > 0) {
        // Delete some files of the layer below and a whole directory of it; make one directory opaque.
        // (odd indices: the even ones are replaced below; each path at most once per layer)
        for (let i = 0; i < 50; i++) {
          const k = 2 * i + 1;
          tar.add(entry(`data/d${k % dirs}/.wh.l${layer - 1}-small-${k}`, 'file'));
        }
        tar.add(entry(`.wh.gone-${layer - 1}`, 'file'));
        tar.add(entry(`data/d${layer}/.wh..wh..opq`, 'file'));
      }
      tar.add(entry(`gone-${layer}`, 'directory'));
      for (let i = 0; i < 20; i++) file(`gone-${layer}/f${i}`, random.int(0, 20_000));
      for (let i = 0; i < perLayerFiles; i++) {
        const p = `data/d${i % dirs}/l${layer}-small-${i}`;
        const size = random.next() < 0.9 ? random.int(0, 4096) : random.int(4096, 131_072);
        file(p, size);
        if (i % 500 === 0) tar.add(entry(`data/d${i % dirs}/l${layer}-link-${i}`, 'link', 0, { linkname: p }));
        if (i % 700 === 0) tar.add(entry(`data/d${i % dirs}/l${layer}-sym-${i}`, 'symlink', 0, { linkname: `l${layer}-small-${i}` }));
      }
      // Replace a few files of the layer below, then fill the layer up with large files.
      if (layer > 0) for (let k = 0; k < 200; k += 2) file(`data/d${k % dirs}/l${layer - 1}-small-${k}`, random.int(0, 8192));
      let written = tar.size;
      for (let i = 0; written < perLayerBytes; i++) {
        const size = Math.min(random.int(1 << 20, 12 << 20), Math.max(1, perLayerBytes - written));
        file(`data/d${i % dirs}/l${layer}-large-${i}`, size);
        written = tar.size;
      }
      const diffId = tar.finish();
      layerFiles.push({ name: `${diffId}.tar`, diffId, path: tar.path });
    }
    const config = Buffer.from(
      JSON.stringify({
        architecture: 'amd64',
        os: 'linux',
        created: '1970-01-01T00:00:01Z',
        config: { Cmd: ['/bin/sh'] },
        rootfs: { type: 'layers', diff_ids: layerFiles.map((l) => `sha256:${l.diffId}`) },
        history: layerFiles.map(() => ({ created: '1970-01-01T00:00:01Z', created_by: 'dockvm bench synthetic' })),
      }),
    );
    const configName = `${createHash('sha256').update(config).digest('hex')}.json`;
    const manifest = Buffer.from(JSON.stringify([{ Config: configName, RepoTags: [repoTag], Layers: layerFiles.map((l) => l.name) }]));
    const archive = new TarFile(`${path}.tmp`);
    archive.add(entry(configName, 'file', config.length), config);
    const chunk = Buffer.allocUnsafe(8 << 20);
    for (const layer of layerFiles) {
      const size = statSync(layer.path).size;
      for (const block of encodeHeader(entry(layer.name, 'file', size))) archive.write(block);
      const fd = openSync(layer.path, 'r');
      for (let at = 0; at < size; ) {
        const n = readSync(fd, chunk, 0, chunk.length, at);
        archive.write(chunk.subarray(0, n));
        at += n;
      }
      closeSync(fd);
      rmSync(layer.path);
    }
    archive.add(entry('manifest.json', 'file', manifest.length), manifest);
    archive.finish();
    renameSync(`${path}.tmp`, path);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------------
// Measuring

interface Bench {
  name: string;
  archive: string;
}

interface Figures {
  name: string;
  sizeMB: number;
  dockvmS: number;
  podmanS: number;
  rssMB: number;
  entries: number;
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

function seconds(run: () => void): number {
  const start = performance.now();
  run();
  return (performance.now() - start) / 1000;
}

function check(result: ReturnType<typeof spawnSync>, what: string): void {
  if (result.status !== 0) throw new Error(`${what} failed (${result.status}): ${String(result.stderr)}`);
}

function measure(bench: Bench, out: string): Figures {
  const tag = `localhost/dockvm-bench/${bench.name}:${randomBytes(4).toString('hex')}`;
  process.stderr.write(`${bench.name}: copying into podman's storage as ${tag} (not timed)\n`);
  execFileSync('skopeo', ['copy', '--quiet', `docker-archive:${bench.archive}`, `containers-storage:${tag}`], { stdio: ['ignore', 'ignore', 'inherit'] });
  const dockvm: number[] = [];
  const podman: number[] = [];
  const rss: number[] = [];
  let entries = 0;
  try {
    for (let run = 0; run < RUNS; run++) {
      const ours = join(out, 'dockvm.tar');
      const timeFile = join(out, 'time');
      dockvm.push(
        seconds(() => {
          const result = spawnSync('/usr/bin/time', ['-f', '%M', '-o', timeFile, process.execPath, join(REPO, 'bin', 'dockvm.js'), 'export', bench.archive, '-o', ours, '--json']);
          check(result, 'dockvm export');
          entries = JSON.parse(String(result.stdout)).entries;
        }),
      );
      rss.push(Number(readFileSync(timeFile, 'utf8').trim().split('\n').pop()) / 1024);
      rmSync(ours);

      const container = `dockvm-bench-${randomBytes(4).toString('hex')}`;
      const theirs = join(out, 'podman.tar');
      podman.push(
        seconds(() => {
          check(spawnSync('podman', ['create', '--name', container, tag, '/nothing']), 'podman create');
          check(spawnSync('podman', ['export', '--output', theirs, container]), 'podman export');
        }),
      );
      spawnSync('podman', ['rm', '--force', container]);
      rmSync(theirs);
    }
  } finally {
    spawnSync('podman', ['rmi', '--force', tag]);
  }
  return {
    name: bench.name,
    sizeMB: statSync(bench.archive).size / 1e6,
    dockvmS: median(dockvm),
    podmanS: median(podman),
    rssMB: Math.max(...rss),
    entries,
  };
}

function main(): void {
  mkdirSync(FIXTURES, { recursive: true });
  const benches: Bench[] = [];
  const small = join(FIXTURES, 'synthetic-small.tar');
  if (!existsSync(small)) buildSynthetic(small, 'localhost/dockvm-bench/synthetic-small:1', 12e6, 2_000);
  benches.push({ name: 'synthetic-small', archive: small });
  const debian = join(FIXTURES, 'debian.tar');
  if (existsSync(debian)) benches.push({ name: 'debian', archive: debian });
  else process.stderr.write(`${debian} is missing (run: bash scripts/setup); benchmarking the synthetic images only\n`);
  const large = join(FIXTURES, 'synthetic-1g.tar');
  if (!existsSync(large)) {
    process.stderr.write(`generating ${large} (once)\n`);
    buildSynthetic(large, 'localhost/dockvm-bench/synthetic-1g:1', 1e9, 40_000);
  }
  benches.push({ name: 'synthetic-1g', archive: large });

  const out = mkdtempSync(join(tmpdir(), 'dockvm-bench-export-'));
  try {
    const rows = benches.map((bench) => measure(bench, out));
    const header = ['image', 'MB', 'entries', 'dockvm s', 'podman s', 'ratio', 'dockvm peak RSS MB'];
    const lines = rows.map((r) => [
      r.name,
      r.sizeMB.toFixed(0),
      String(r.entries),
      r.dockvmS.toFixed(2),
      r.podmanS.toFixed(2),
      (r.dockvmS / r.podmanS).toFixed(2),
      r.rssMB.toFixed(0),
    ]);
    const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
    const format = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
    console.log(`dockvm export (native) vs podman create + export; median of ${RUNS} runs, warm cache`);
    console.log(format(header));
    for (const line of lines) console.log(format(line));
    console.log('goals: ratio <= 1.00; peak RSS <= 150 MB and flat from small to 1 GB');
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}

main();
