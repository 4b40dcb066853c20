// What VM starts remember across processes (file-memo.ts): a value stays remembered while its files are
// unchanged, and is computed again when one changes, even to the same size and mtime; each copy of dockvm
// sharing a cache remembers its own.
import { copyFile, mkdir, mkdtemp, readFile, rm, utimes, writeFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { pathToFileURL } from 'node:url';
import test from 'ava';
import { memoized } from '../../src/vm/file-memo.js';
import { packageRoot } from '../../src/vm/paths.js';

/** `file` and every module of dist/src it imports, however deep, as paths relative to `root`. */
async function localImports(root: string, file: string, found = new Set<string>()): Promise<Set<string>> {
  if (found.has(file)) return found;
  found.add(file);
  const code = await readFile(join(root, file), 'utf8');
  for (const [, spec] of code.matchAll(/(?:from|import)\s*\(?\s*'(\.{1,2}\/[^']+)'/g)) {
    await localImports(root, posix.normalize(posix.join(posix.dirname(file), spec!)), found);
  }
  return found;
}

test('a value is remembered while its files are unchanged; a rewrite, even keeping size and mtime, computes it again', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'dockvm-file-memo-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const env = { DOCKVM_CACHE: join(dir, 'cache') };
  const input = join(dir, 'input');
  await writeFile(input, 'one');
  const old = new Date(Date.now() - 60_000);
  await utimes(input, old, old);
  // ctime is now; a file changed in the last moments is not remembered (it may be changing still)
  let computed = 0;
  const compute = async () => {
    computed++;
    return { value: `${computed}`, files: [input] };
  };
  t.is(await memoized('test', 'key', compute, { env }), '1');
  t.is(await memoized('test', 'key', compute, { env }), '2', 'just written: not remembered yet');
  await new Promise((resolve) => setTimeout(resolve, 2100));
  t.is(await memoized('test', 'key', compute, { env }), '3');
  t.is(await memoized('test', 'key', compute, { env }), '3', 'remembered');
  t.is(await memoized('test', 'another key', compute, { env }), '4');

  // the same bytes' length and mtime, written again: the ctime moves, so it is computed again
  const before = await stat(input);
  await writeFile(input, 'two');
  await utimes(input, before.atime, before.mtime);
  t.is(await memoized('test', 'key', compute, { env }), '5');
  t.is(await memoized('test', 'key', compute, { env, usable: () => false }), '6', 'a value its caller cannot use');
});

test('dockvm never takes a value remembered by another copy of it (another checkout) sharing its cache', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'dockvm-file-memo-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const env = { DOCKVM_CACHE: join(dir, 'cache') };
  // another checkout's build of file-memo.ts (and what it imports), beside this one's
  const built = join(packageRoot(), 'dist', 'src');
  for (const file of await localImports(built, 'vm/file-memo.js')) {
    await mkdir(join(dir, 'other', 'src', file, '..'), { recursive: true });
    await copyFile(join(built, file), join(dir, 'other', 'src', file));
  }
  const other = (await import(pathToFileURL(join(dir, 'other', 'src', 'vm', 'file-memo.js')).href)) as typeof import('../../src/vm/file-memo.js');
  const input = join(dir, 'input');
  await writeFile(input, 'one');
  // files changed in the last 2 s are not remembered: the copy's own code among them
  await new Promise((resolve) => setTimeout(resolve, 2100));
  t.is(await other.memoized('test', 'key', async () => ({ value: 'the other copy\'s', files: [input] }), { env }), 'the other copy\'s');
  t.is(await other.memoized('test', 'key', async () => ({ value: 'computed again', files: [input] }), { env }), 'the other copy\'s', 'the copy remembers its own');
  t.is(await memoized('test', 'key', async () => ({ value: 'this one\'s', files: [input] }), { env }), 'this one\'s');
});
