// How push gzips an uncompressed layer. ISA-L's igzip (Debian package isal), when it is on PATH, deflates
// four to seven times faster than zlib for a similar size: on the Debian fixture's 204 MB layer, igzip took
// 0.33 CPU-s for 99.5 MB (level 1; 0.54 for 97.4 MB at level 3) where zlib level 3 took 2.35 CPU-s for
// 96.5 MB. Without it, zlib on every core (ParallelGzip). Both are deterministic (the same bytes in, the
// same gzip out, however the input is chunked), but they give different bytes, so `id` names the
// compressor and its version: the gzip cache (gzip-cache.ts) is keyed by it. DOCKVM_PUSH_GZIP=zlib
// chooses zlib even where igzip is installed.
import type { Duplex } from 'node:stream';
import { ParallelGzip } from './parallel-gzip.js';

export interface LayerGzip {
  /** the compressor, its version and settings: what the compressed bytes depend on */
  readonly id: string;
  /** a new compressing stream: tar in, gzip out (no name, mtime 0) */
  create(): Duplex;
}

/**
 * Of igzip's levels 0–3, 1: on the Debian fixture's layer it took 0.33 CPU-s for 99.5 MB and
 * level 3 0.54 CPU-s for 97.4 MB (skopeo's gzip: 95.1 MB); a whole push was 1.34–1.51 s against 1.84 s.
 */
const IGZIP_LEVEL = 1;
/** zlib level 3 costs a third less CPU than 6, for a few % more bytes. */
const ZLIB = { level: 3, blockSize: 1024 * 1024 } as const;

let chosen: Promise<LayerGzip> | undefined;

/** The compressor pushes use: igzip when it is installed, else zlib. Probed once per process. */
export function layerGzip(): Promise<LayerGzip> {
  chosen ??= process.env.DOCKVM_PUSH_GZIP === 'zlib' ? Promise.resolve(zlibGzip()) : igzipOrZlib();
  return chosen;
}

async function igzipOrZlib(): Promise<LayerGzip> {
  // loaded here, not at the top: pull and the other commands that import this module never need it
  const { execa } = await import('execa');
  const version = await igzipVersion(execa);
  return version !== undefined ? igzip(execa, version) : zlibGzip();
}

type Execa = typeof import('execa').execa;

/** "2.30.0" from `igzip --version`, or undefined when igzip is missing or says something else. */
async function igzipVersion(execa: Execa): Promise<string | undefined> {
  try {
    const { stdout } = await execa('igzip', ['--version'], { stdin: 'ignore', timeout: 10_000 });
    return /interface\s+(\d+(?:\.\d+)+)/.exec(stdout)?.[1];
  } catch {
    return undefined;
  }
}

function igzip(execa: Execa, version: string): LayerGzip {
  return {
    id: `igzip${version}-l${IGZIP_LEVEL}`,
    // -n: no name and no timestamp in the header, so the bytes depend only on the input.
    create: () => execa('igzip', [`-${IGZIP_LEVEL}`, '-n', '-c'], { buffer: { stdout: false }, stdin: 'pipe', stderr: 'pipe' }).duplex(),
  };
}

function zlibGzip(): LayerGzip {
  return {
    id: `zlib${process.versions.zlib}-l${ZLIB.level}-b${ZLIB.blockSize}`,
    create: () => new ParallelGzip(ZLIB),
  };
}
