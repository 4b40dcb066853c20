// Run as a child of forged-upper.test.ts: read a manifest (argv: manifest, disk, output) and write its
// layer, as a build stage does, then print this process's peak RSS before and after, in KiB.
import { readUpperManifest } from '../../src/layer/upper-manifest.js';
import { writeLayerFromEntries } from '../../src/layer/layer-file.js';
import { statSync } from 'node:fs';

const [path, disk, out] = process.argv.slice(2) as [string, string, string];
const before = process.resourceUsage().maxRSS;
const entries = [...readUpperManifest({ path, size: statSync(path).size, disk, source: 'the forged manifest' })];
const layer = await writeLayerFromEntries(entries, out, { source: 'the forged manifest' });
console.log(JSON.stringify({ before, after: process.resourceUsage().maxRSS, entries: layer.entries, size: layer.size }));
