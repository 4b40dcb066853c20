// The shape of src/: no import cycle between modules, and between folders every arrow points one way
// (cli → build → transport → layer → image, and so on), so that each folder can be read, and tested,
// knowing only what is below it. The image model and the layer code never import the VM code.
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';

const SRC = fileURLToPath(new URL('../src', import.meta.url));

/** `from '…'` of import/export declarations (type-only ones too: a cycle of types is still a tangle), and import('…'). */
const SPECIFIER = /^\s*(?:import|export)\b[^'"]*?\bfrom\s*['"]([^'"]+)['"]|^\s*import\s*['"]([^'"]+)['"]|\bimport\(\s*['"]([^'"]+)['"]\s*\)/gm;

/** Each module of src/ (relative path) and the modules of src/ it imports. */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of readdirSync(SRC, { recursive: true, encoding: 'utf8' }).filter((name) => name.endsWith('.ts'))) {
    const text = readFileSync(join(SRC, file), 'utf8');
    const targets = [...text.matchAll(SPECIFIER)]
      .map((match) => match[1] ?? match[2] ?? match[3]!)
      .filter((specifier) => specifier.startsWith('.'))
      .map((specifier) => relative(SRC, resolve(SRC, dirname(file), specifier)).replace(/\.js$/, '.ts'));
    graph.set(file, [...new Set(targets)]);
  }
  return graph;
}

/** A cycle in `graph`, as the path around it, or undefined. */
function findCycle(graph: Map<string, readonly string[]>): string[] | undefined {
  const state = new Map<string, 'open' | 'done'>();
  const path: string[] = [];
  const visit = (node: string): string[] | undefined => {
    if (state.get(node) === 'done') return undefined;
    if (state.get(node) === 'open') return [...path.slice(path.indexOf(node)), node];
    state.set(node, 'open');
    path.push(node);
    for (const next of graph.get(node) ?? []) {
      const cycle = visit(next);
      if (cycle) return cycle;
    }
    path.pop();
    state.set(node, 'done');
    return undefined;
  };
  for (const node of graph.keys()) {
    const cycle = visit(node);
    if (cycle) return cycle;
  }
  return undefined;
}

/** A module's folder under src/ (cli, vm, transport…); a module at the top (errors.ts, output.ts) is its own. */
function folderOf(file: string): string {
  return file.includes('/') ? file.slice(0, file.indexOf('/')) : file;
}

const graph = importGraph();

test('the import graph is read: every relative import names a module of src/', (t) => {
  t.true(graph.size > 50, `found ${graph.size} modules`);
  t.deepEqual(graph.get('transport/open.ts')?.includes('transport/registry/registry-image.ts'), true);
  const missing = [...graph].flatMap(([file, targets]) => targets.filter((target) => !graph.has(target)).map((target) => `${file} → ${target}`));
  t.deepEqual(missing, []);
});

test('no import cycle between the modules of src/', (t) => {
  const cycle = findCycle(graph);
  t.is(cycle, undefined, `import cycle: ${cycle?.join(' → ')}`);
});

test('between the folders of src/, every arrow points one way', (t) => {
  const folders = new Map<string, string[]>();
  for (const [file, targets] of graph) {
    if (file === 'index.ts') continue; // the library's entry: it re-exports from everywhere, and nothing imports it
    const from = folderOf(file);
    const to = new Set(folders.get(from));
    for (const target of targets) if (folderOf(target) !== from) to.add(folderOf(target));
    folders.set(from, [...to]);
  }
  const cycle = findCycle(folders);
  t.is(cycle, undefined, `folders import each other: ${cycle?.join(' → ')}`);
});

test('the image model and the layer code do not import the VM code', (t) => {
  const wrong = [...graph].flatMap(([file, targets]) =>
    ['image', 'layer'].includes(folderOf(file)) ? targets.filter((target) => folderOf(target) === 'vm').map((target) => `${file} → ${target}`) : [],
  );
  t.deepEqual(wrong, []);
});

test('the cycle finder finds a cycle, and the path around it', (t) => {
  t.deepEqual(findCycle(new Map([['a', ['b']], ['b', ['c']], ['c', ['b']]])), ['b', 'c', 'b']);
  t.is(findCycle(new Map([['a', ['b', 'c']], ['b', ['c']], ['c', []]])), undefined);
});

test("zod is imported as a namespace (import * as z), which the CLI's bundle tree-shakes", (t) => {
  // `import { z } from 'zod'` takes zod's `z` object, all of it: the bundle then carries every schema
  // kind and locale (a 756 KB chunk, ~40-80 ms to load at each start); `import * as z` only what is used
  const whole = [...graph.keys()].filter((file) => /^\s*import\s*\{[^}]*\bz\b[^}]*\}\s*from\s*['"]zod['"]/m.test(readFileSync(join(SRC, file), 'utf8')));
  t.deepEqual(whole, []);
});
