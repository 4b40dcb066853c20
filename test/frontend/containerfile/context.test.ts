// Which context files COPY picks (Docker's rules for directories, wildcards, the destination's
// trailing slash, symlinks, sources outside the context) and .dockerignore's semantics.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { ignoreMatcher, parseIgnorePatterns } from '../../../src/frontend/containerfile/dockerignore.js';
import type { CopyStep } from '../../../src/plan/plan.js';
import { makeContext, plan, planError, targetSteps, type ContextFile } from './helpers.js';

async function copyOf(t: import('ava').ExecutionContext, line: string, files: Record<string, ContextFile>): Promise<CopyStep> {
  const steps = targetSteps(await plan(t, `FROM x\n${line}\n`, { files }));
  return steps.find((s): s is CopyStep => s.kind === 'copy')!;
}

const pairs = (copy: CopyStep) => copy.entries.map((e) => `${e.source} -> ${e.target || '.'}${e.type === 'directory' ? '/' : ''}`);

const TREE: Record<string, ContextFile> = {
  'a.txt': 'a',
  'b.txt': 'b',
  'c.md': 'c',
  'dir/x': 'x',
  'dir/sub/y': 'y',
  'dir/sub/z.txt': 'z',
};

test('COPY dir copies what is in it, not the directory itself', async (t) => {
  const copy = await copyOf(t, 'COPY dir /dest', TREE);
  t.deepEqual(pairs(copy), ['dir -> ./', 'dir/sub -> sub/', 'dir/sub/y -> sub/y', 'dir/sub/z.txt -> sub/z.txt', 'dir/x -> x']);
  t.deepEqual(pairs(await copyOf(t, 'COPY dir/ /dest/', TREE)), pairs(copy));
});

test('COPY *.txt dest/ puts each match inside dest; a wildcard with several matches makes dest a directory', async (t) => {
  const copy = await copyOf(t, 'COPY *.txt /dest/', TREE);
  t.deepEqual(pairs(copy), ['a.txt -> a.txt', 'b.txt -> b.txt']);
  const noSlash = await copyOf(t, 'COPY *.txt /dest', TREE);
  t.true(noSlash.destIsDir);
  t.deepEqual(pairs(noSlash), pairs(copy));
  // one match and no slash: dest is the file
  const one = await copyOf(t, 'COPY c.m? /notes', TREE);
  t.false(one.destIsDir);
  t.deepEqual(pairs(one), ['c.md -> .']);
});

test('wildcards match per path component; [] classes work like Go\'s filepath.Match', async (t) => {
  t.deepEqual(pairs(await copyOf(t, 'COPY dir/*/*.txt /d/', TREE)), ['dir/sub/z.txt -> z.txt']);
  t.deepEqual(pairs(await copyOf(t, 'COPY [ab].txt /d/', TREE)), ['a.txt -> a.txt', 'b.txt -> b.txt']);
  t.deepEqual(pairs(await copyOf(t, 'COPY [^a].txt /d/', TREE)), ['b.txt -> b.txt']);
  // the expander takes the backslash first, as Docker's does: star\*.txt is the pattern star*.txt
  t.deepEqual(pairs(await copyOf(t, 'COPY star\\*.txt /d/', { 'star*.txt': 's', 'starX.txt': 'x' })), ['star*.txt -> star*.txt', 'starX.txt -> starX.txt']);
});

test('a wildcard that matches nothing copies nothing; a missing plain source is an error', async (t) => {
  t.deepEqual((await copyOf(t, 'COPY *.none /d/', TREE)).entries, []);
  const err = await planError(t, 'FROM x\nCOPY missing.txt /d/\n', { files: TREE });
  t.like(err, { instruction: 'COPY', line: 2 });
  t.regex(err.message, /"missing.txt" not found in the build context/);
});

test('sources that leave the context by .. or by a symlink are refused', async (t) => {
  t.regex((await planError(t, 'FROM x\nCOPY ../etc/passwd /x\n', { files: TREE })).message, /"..\/etc\/passwd" is outside the build context/);
  t.regex((await planError(t, 'FROM x\nCOPY dir/../../x /x\n', { files: TREE })).message, /outside the build context/);
  const links = { ...TREE, 'abs-link': { symlink: '/etc/passwd' }, 'up-link': { symlink: '../../..' } };
  t.regex((await planError(t, 'FROM x\nCOPY abs-link /x\n', { files: links })).message, /leads outside the build context \(through the symlink abs-link -> \/etc\/passwd\)/);
  t.regex((await planError(t, 'FROM x\nCOPY up-link/etc/passwd /x\n', { files: links })).message, /leads outside the build context/);
});

test('a symlink a source names is followed inside the context; symlinks inside a copied directory stay symlinks', async (t) => {
  const files = { ...TREE, 'link.txt': { symlink: 'dir/x' }, 'dirlink': { symlink: 'dir/sub' }, 'dir/sub/back': { symlink: '../../a.txt' } };
  t.deepEqual((await copyOf(t, 'COPY link.txt /d/', files)).entries, [{ source: 'dir/x', target: 'link.txt', type: 'file', named: true }]);
  const viaDir = await copyOf(t, 'COPY dirlink /d/', files);
  t.deepEqual(pairs(viaDir), ['dir/sub -> ./', 'dir/sub/back -> back', 'dir/sub/y -> y', 'dir/sub/z.txt -> z.txt']);
  t.is(viaDir.entries[1]!.type, 'symlink');
});

test('a FIFO in the context is an error naming it', async (t) => {
  const dir = makeContext(t, { Containerfile: 'FROM x\nCOPY . /\n' });
  execFileSync('mkfifo', [join(dir, 'pipe')]);
  const { planContainerfile } = await import('../../../src/frontend/containerfile/planner.js');
  const err = await t.throwsAsync(planContainerfile({ contextDir: dir, resolveBase: async () => ({ config: {}, platform: { os: 'linux', architecture: 'amd64' } }) }));
  t.regex(err!.message, /holds a FIFO at "pipe"/);
});

test('.dockerignore leaves files out; an exception brings one back with the directories above it', async (t) => {
  const files = { ...TREE, '.dockerignore': '# build output\ndir\n!dir/sub/z.txt\n*.md\n' };
  const copy = await copyOf(t, 'COPY . /src/', files);
  t.deepEqual(pairs(copy), ['. -> ./', '.dockerignore -> .dockerignore', 'Containerfile -> Containerfile', 'a.txt -> a.txt', 'b.txt -> b.txt', 'dir -> dir/', 'dir/sub -> dir/sub/', 'dir/sub/z.txt -> dir/sub/z.txt']);
  t.regex((await planError(t, 'FROM x\nCOPY c.md /\n', { files })).message, /"c.md" not found in the build context .*\.dockerignore/);
  const p = await plan(t, 'FROM x\n', { files });
  t.deepEqual(p.context.ignore, ['dir', '!dir/sub/z.txt', '*.md']);
});

test('Containerfile.dockerignore beside the Containerfile wins over .dockerignore', async (t) => {
  const files = { ...TREE, '.dockerignore': 'a.txt\n', 'Containerfile.dockerignore': 'b.txt\n' };
  const copy = await copyOf(t, 'COPY *.txt /d/', files);
  t.deepEqual(pairs(copy), ['a.txt -> a.txt']);
});

test('.dockerignore lines: # comments at the start only, whitespace trimmed, paths cleaned, leading / dropped', (t) => {
  t.deepEqual(parseIgnorePatterns('\uFEFF# c\n  spaced  \n/abs\n./rel/../x\n! keep\ndir/\n\n'), ['spaced', 'abs', 'x', '!keep', 'dir']);
});

// Docker's matching rules (moby/patternmatcher), each checked against @balena/dockerignore.
const MATCHES: [string[], string, boolean][] = [
  [['*.md', '!README.md'], 'a.md', true],
  [['*.md', '!README.md'], 'README.md', false],
  [['*.md'], 'docs/a.md', false],
  [['dir'], 'dir/deep/file', true],
  [['dir'], 'dirx', false],
  [['**/*.go'], 'a.go', true],
  [['**/*.go'], 'x/y/a.go', true],
  [['a/**/b'], 'a/b', true],
  [['a/*/c'], 'a/b/c', true],
  [['a/*/c'], 'a/b/d/c', false],
  [['x/**'], 'x', false],
  [['x/**'], 'x/a/b', true],
  [['temp?'], 'temp1', true],
  [['temp?'], 'tempab', false],
  [['*', '!*.txt', 'bad.txt'], 'ok.txt', false],
  [['*', '!*.txt', 'bad.txt'], 'bad.txt', true],
  [['Dir'], 'dir', false],
  [['dir', '!dir/keep'], 'dir/keep/inside', false],
];

for (const [patterns, path, ignored] of MATCHES) {
  test(`.dockerignore ${JSON.stringify(patterns)} ${ignored ? 'ignores' : 'keeps'} ${path}`, (t) => {
    t.is(ignoreMatcher(patterns)(path), ignored);
  });
}
