// Issue 13, from the inputs: a Containerfile context whose symlinks lead out of it, or that holds a FIFO,
// gets one error before any VM, and nothing outside the context is read; a symlink inside a copied
// directory is copied as a symlink, never followed. A --secret's value is in none of the bytes the build
// leaves: the image (every layer, the config, the history), the build's log and --json, the build cache,
// QEMU's command line.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runDockvm } from '../helpers/peers.js';
import { qemuCounter } from '../helpers/qemu-counter.js';
import { BASE, baseContext, buildDir, layers, tempRoot, text } from './helpers.js';

/** An outside file, and a context with what `make` puts in it. */
function escapeContext(t: Parameters<typeof buildDir>[0], containerfile: string, make: (ctx: string, outside: string) => void) {
  const d = buildDir(t, containerfile);
  const outside = join(d.dir, 'outside');
  mkdirSync(outside);
  writeFileSync(join(outside, 'credentials'), 'host credentials\n');
  make(d.ctx, outside);
  return d;
}

const escapes: [string, string, (ctx: string, outside: string) => void, RegExp][] = [
  ['COPY link/ through an absolute symlink out of the context', 'COPY link/ /x/', (ctx, outside) => symlinkSync(outside, join(ctx, 'link')), /"link\/" leads outside the build context \(through the symlink link -> \/\S+\/outside\)/],
  ['COPY through a relative symlink out of the context', 'COPY link/credentials /x', (ctx) => symlinkSync('../outside', join(ctx, 'link')), /"link\/credentials" leads outside the build context/],
  ['ADD of a symlink to a file outside', 'ADD creds /x', (ctx, outside) => symlinkSync(join(outside, 'credentials'), join(ctx, 'creds')), /"creds" leads outside the build context/],
  ['COPY of a symlink chain that ends outside', 'COPY a /x', (ctx) => (symlinkSync('b', join(ctx, 'a')), symlinkSync('../outside/credentials', join(ctx, 'b'))), /"a" leads outside the build context/],
  ['COPY . of a context with a FIFO', 'COPY . /x/', (ctx) => execFileSync('mkfifo', [join(ctx, 'pipe')]), /the build context holds a FIFO at "pipe": COPY and ADD copy regular files, directories and symlinks; add it to \.dockerignore/],
];

for (const [what, instruction, make, error] of escapes) {
  test(`${what}: one error before any VM, nothing outside read, nothing written`, async (t) => {
    const { dir, ctx, out } = escapeContext(t, `FROM ${BASE}\n${instruction}\n`, make);
    const before = statSync(join(dir, 'outside', 'credentials')).atimeMs;
    const qemu = await qemuCounter(t);
    const temp = tempRoot(t);
    const run = await runDockvm(['build', '--build-context', baseContext(), '-t', 'localhost/dockvm-test/in:1', '-o', out, ctx], { env: { ...qemu.env, ...temp.env } });
    t.is(run.exitCode, 1, run.stderr);
    const errors = run.stderr.split('\n').filter((line) => line.startsWith('dockvm: '));
    t.is(errors.length, 1, run.stderr);
    t.regex(errors[0]!, error);
    t.false(run.stderr.includes('host credentials'));
    t.is(statSync(join(dir, 'outside', 'credentials')).atimeMs, before, 'the outside file was not read');
    t.deepEqual(readdirSync(dir).sort(), ['ctx', 'outside'], 'no output, nothing beside it');
    t.is(qemu.boots(), 0);
    t.deepEqual(temp.left(), []);
  });
}

const SECRET = 'dockvm-secret-7f3a9c1e5b-value';

test('a --secret reaches the RUN step that mounts it and no byte of anything the build leaves; a symlink out of a copied directory stays a symlink', async (t) => {
  const containerfile = [
    `FROM ${BASE}`,
    'COPY tree/ /tree/',
    // the step uses the secret, as a file and as a variable, and keeps only proof that it saw it
    `RUN --mount=type=secret,id=token test "$(cat /run/secrets/token)" = "${SECRET.replace('value', '')}"'value' && echo saw-the-file > /proof.txt`,
    'RUN --mount=type=secret,id=token,env=TOKEN sh -c \'[ ${#TOKEN} -gt 20 ] && echo saw-the-variable >> /proof.txt\'',
    // a step without the mount does not find it where the mount was
    'RUN ls -A /run/secrets 2>/dev/null | wc -l > /later.txt; env | grep -c TOKEN >> /later.txt || true',
    '',
  ].join('\n');
  const d = escapeContext(t, containerfile, (ctx, outside) => {
    mkdirSync(join(ctx, 'tree'));
    writeFileSync(join(ctx, 'tree', 'plain.txt'), 'plain\n');
    symlinkSync(join(outside, 'credentials'), join(ctx, 'tree', 'creds'));
  });
  // the secret's file, its value split in the Containerfile so that the Containerfile does not hold it whole
  const secretFile = join(d.dir, 'outside', 'token');
  writeFileSync(secretFile, SECRET);
  const cacheDir = join(d.dir, 'cache');
  const qemu = await qemuCounter(t);
  const temp = tempRoot(t);
  const run = await runDockvm(['build', '--json', '--secret', `id=token,src=${secretFile}`, '--build-context', baseContext(), '-t', 'localhost/dockvm-test/secret:1', '-o', d.out, d.ctx], {
    env: { ...qemu.env, ...temp.env, DOCKVM_BUILD_CACHE: 'on', DOCKVM_BUILD_CACHE_DIR: cacheDir },
  });
  t.is(run.exitCode, 0, run.stderr);
  const all = await layers(d.out);
  const [copied, , , later] = all.slice(-4);
  t.like(copied!.get('tree/creds')?.entry, { type: 'symlink', linkname: join(d.dir, 'outside', 'credentials') }, 'copied as the symlink it is');
  t.is(text(copied, 'tree/plain.txt'), 'plain\n');
  t.is(text(all.at(-3), 'proof.txt'), 'saw-the-file\n');
  t.is(text(all.at(-2), 'proof.txt'), 'saw-the-file\nsaw-the-variable\n', 'the steps that mount it have it');
  t.is(text(later, 'later.txt'), '0\n0\n', 'the step that does not, has not');
  // every byte the build left
  const needle = Buffer.from(SECRET);
  const holders: string[] = [];
  const search = (path: string): void => {
    const stat = statSync(path);
    if (stat.isDirectory()) return void readdirSync(path).forEach((name) => search(join(path, name)));
    if (readFileSync(path).includes(needle)) holders.push(path);
  };
  search(d.out);
  search(cacheDir);
  t.true(readdirSync(cacheDir).length > 0, 'the build cache was written');
  for (const layer of all) for (const [path, file] of layer) if (file.data.includes(needle)) holders.push(`a layer's ${path}`);
  if (run.stdout.includes(SECRET)) holders.push('--json');
  if (run.stderr.includes(SECRET)) holders.push('the log');
  if (qemu.starts().some(({ argv }) => argv.join(' ').includes(SECRET))) holders.push("QEMU's command line");
  t.deepEqual(holders, [], 'nothing holds the secret');
  t.is(qemu.boots(), 1);
  t.deepEqual(temp.left(), []);
});
