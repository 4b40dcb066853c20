// npm run build's second step: the CLI bundled by esbuild into dist/cli/ (main.mjs and its chunks) from what tsc
// compiled. Node 20 has no compile cache, and loading the ~150 modules a registry command needs took
// 160 ms, bundled 70 ms (a pull went 1.40–1.63 → 1.32–1.38 s). bin/dockvm.js runs it; the library
// (dist/src) and the tests are not bundled. It must live inside the package: paths.ts finds package.json
// above it.
// zod is imported as a namespace (import * as z) so that esbuild keeps only the schema kinds used: its
// `z` object would keep all of zod, every locale too (a 756 KB chunk, 194 KB so; test/imports.test.ts).
import { rm } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = fileURLToPath(new URL('../../', import.meta.url)); // dist/scripts/ → the repository

// Chunks are named by their hash: clear the old ones out.
await rm(`${root}dist/cli`, { recursive: true, force: true });

await build({
  entryPoints: [`${root}dist/src/cli/main.js`],
  outdir: `${root}dist/cli`,
  outExtension: { '.js': '.mjs' },
  bundle: true,
  // the commands' lazy imports stay lazy: each is a chunk loaded when that command runs
  splitting: true,
  chunkNames: 'chunk-[hash]',
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: true,
  logLevel: 'warning',
  // The CommonJS packages in the bundle (tar-stream, commander…) call require() for Node's modules.
  banner: { js: "import { createRequire as __dockvmRequire } from 'node:module'; const require = __dockvmRequire(import.meta.url);" },
});
