import test from 'ava';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { openImages } from '../../src/transport/index.js';
import { dockerArchive } from '../fixtures/assemble.js';
import { runDockvm } from '../helpers/peers.js';
import { sampleLayers, sha, tempDir } from '../transport/archives.js';
import { writeBadArchives } from './bad-archives.js';

test('merge: every image and tag of every input, shared layers once, gzip for .gz', async (t) => {
  const { base, app } = await sampleLayers();
  const dir = await tempDir(t);
  await writeFile(join(dir, 'one.tar'), await dockerArchive([{ repoTag: 'app:1', layers: [base, app] }, { repoTag: 'app:2', layers: [base, app], config: { config: { Cmd: ['two'] } } }]));
  await writeFile(join(dir, 'two.tar'), await dockerArchive([{ repoTag: 'base:1', layers: [base] }]));
  const run = await runDockvm(['merge', 'one.tar', 'two.tar', '-o', 'all.tar.gz', '--json'], { cwd: dir });
  t.is(run.exitCode, 0, run.stderr);
  const result = JSON.parse(run.stdout);
  t.like(result, { output: 'all.tar.gz', gzip: true, layers: 2 });
  t.deepEqual(result.images.map((image: { repoTags: string[] }) => image.repoTags), [['app:1'], ['app:2'], ['base:1']]);
  t.deepEqual((await readFile(join(dir, 'all.tar.gz'))).subarray(0, 2), Buffer.from([0x1f, 0x8b]));
  const { images, close } = await openImages(join(dir, 'all.tar.gz'));
  t.teardown(close);
  t.deepEqual(images.map((image) => image.repoTags), [['app:1'], ['app:2'], ['base:1']]);
  const manifest = JSON.parse(gunzipSync(await readFile(join(dir, 'all.tar.gz'))).toString('latin1').match(/\[\{"Config".*?\}\]/)![0]);
  t.deepEqual(manifest.map((entry: { Layers: string[] }) => entry.Layers), [[`${sha(base)}.tar`, `${sha(app)}.tar`], [`${sha(base)}.tar`, `${sha(app)}.tar`], [`${sha(base)}.tar`]]);
  // Text output goes to stderr, the same run again gives the same bytes.
  const again = await runDockvm(['merge', 'one.tar', 'two.tar', '-o', 'again.tar.gz'], { cwd: dir });
  t.is(again.stdout, '');
  t.regex(again.stderr, /wrote again\.tar\.gz: 3 image\(s\), 2 distinct layer\(s\), tags app:1, app:2, base:1/);
  t.deepEqual(await readFile(join(dir, 'again.tar.gz')), await readFile(join(dir, 'all.tar.gz')));
});

test('merge to stdout with -o -', async (t) => {
  const { base } = await sampleLayers();
  const dir = await tempDir(t);
  await writeFile(join(dir, 'in.tar'), await dockerArchive([{ repoTag: 'base:1', layers: [base] }]));
  const run = await runDockvm(['merge', 'in.tar', '-o', '-'], { cwd: dir });
  t.is(run.exitCode, 0, run.stderr);
  t.true(run.stdout.includes('manifest.json'));
  t.true(run.stdout.includes(`${sha(base)}.tar`));
});

test('usage errors exit 2', async (t) => {
  const missingOutput = await runDockvm(['merge', 'a.tar']);
  t.is(missingOutput.exitCode, 2);
  t.regex(missingOutput.stderr, /required option '-o, --output <out>'/);
  const both = await runDockvm(['merge', 'a.tar', '-o', '-', '--json']);
  t.is(both.exitCode, 2);
  t.is(both.stderr, 'dockvm: --json and -o - both want stdout; write the archive to a file\n');
});

test('bad archives: one line naming the archive and the entry, exit 1, no output left behind', async (t) => {
  const dir = await tempDir(t);
  const bad = await writeBadArchives(dir);
  const temp = await tempDir(t); // the CLI's own temp files (a decompressed archive, spooled layers) go here
  for (const { name, says } of bad) {
    const run = await runDockvm(['merge', name, '-o', 'out.tar'], { cwd: dir, env: { TMPDIR: temp } });
    t.is(run.exitCode, 1, name);
    t.is(run.stdout, '', name);
    const lines = run.stderr.split('\n').filter(Boolean);
    t.is(lines.length, 1, `${name}: ${run.stderr}`);
    t.true(lines[0]!.startsWith(`dockvm: ${name}: `), `${name}: ${lines[0]}`);
    t.regex(lines[0]!, says, name);
    t.deepEqual((await readdir(dir)).filter((file) => file.includes('out')), [], `${name} left output`);
  }
  t.deepEqual(await readdir(temp), [], 'temp files left');
});
