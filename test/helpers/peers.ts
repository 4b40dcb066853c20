// Running real programs from tests: the built dockvm CLI, and the peers that check our output
// (skopeo, podman, umoci). Peer tests are skipped with a reason when a tool is missing.
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext } from 'ava';
import { execa, execaSync } from 'execa';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = join(ROOT, 'bin', 'dockvm.js');
const BUILT_MAIN = join(ROOT, 'dist', 'src', 'cli', 'main.js');
/** What bin/dockvm.js runs: the CLI bundled from dist/src (scripts/bundle.ts). */
const BUNDLE = join(ROOT, 'dist', 'cli', 'main.mjs');

export interface Run {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Run `node bin/dockvm.js ARGS` (the built CLI: `npm run build` first). Never rejects on a non-zero exit. */
/** dockvm's error lines in `stderr`: its `dockvm: …` lines that are not warnings or notices (a snapshot made, a KVM fallback). */
export function errorLines(stderr: string): string[] {
  return stderr.split('\n').filter((line) => line.startsWith('dockvm: ') && !/^dockvm: (warning|notice): /.test(line));
}

export async function runDockvm(args: readonly string[], options: { cwd?: string; env?: Record<string, string> } = {}): Promise<Run> {
  assertBuilt();
  const result = await execa('node', [CLI, ...args], { cwd: options.cwd ?? ROOT, env: { DEBUG: '', ...options.env }, reject: false, stripFinalNewline: false });
  return { exitCode: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
}

/**
 * Tests of the CLI run the compiled program; refuse to test a dist/ older than the sources these tests
 * exercise (each source against its own compiled file: others' work in progress elsewhere does not count).
 */
function assertBuilt(): void {
  if (!existsSync(BUILT_MAIN) || !existsSync(BUNDLE)) throw new Error('dist/ is missing: run `npm run build` before the CLI tests');
  const bundled = statSync(BUNDLE).mtimeMs;
  const sources = [
    'src/errors.ts', 'src/cli/main.ts', 'src/cli/io.ts', 'src/cli/inspect.ts', 'src/cli/merge.ts', 'src/layer/tar.ts',
    ...['src/transport', 'src/image'].flatMap((dir) => readdirSync(join(ROOT, dir)).filter((name) => name.endsWith('.ts')).map((name) => `${dir}/${name}`)),
  ];
  for (const source of sources) {
    const built = join(ROOT, 'dist', source.replace(/\.ts$/, '.js'));
    if (!existsSync(built) || statSync(built).mtimeMs < statSync(join(ROOT, source)).mtimeMs) {
      throw new Error(`dist/ is older than ${source}: run \`npm run build\` before the CLI tests`);
    }
    if (bundled < statSync(built).mtimeMs) throw new Error(`dist/cli/ is older than ${built}: run \`npm run build\` (it bundles) before the CLI tests`);
  }
}

const available = new Map<string, boolean>();

/** Whether `tool` runs here (`tool --version`). */
export function hasTool(tool: string): boolean {
  if (!available.has(tool)) {
    let ok = false;
    try {
      ok = execaSync(tool, ['--version'], { reject: false }).exitCode === 0;
    } catch {
      ok = false;
    }
    available.set(tool, ok);
  }
  return available.get(tool)!;
}

/** Run a peer tool; a failure rejects with its stderr. */
export async function peer(tool: 'skopeo' | 'podman' | 'umoci', args: readonly string[], options: { cwd?: string; input?: Buffer } = {}): Promise<string> {
  const result = await execa(tool, args, { cwd: options.cwd, reject: false, ...(options.input ? { input: options.input } : {}) });
  if (result.exitCode !== 0) throw new Error(`${tool} ${args.join(' ')} failed (${result.exitCode}): ${String(result.stderr).trim()}`);
  return String(result.stdout);
}

/** A name no other test run uses, for images loaded into podman's store. */
export function uniqueName(label: string): string {
  return `dockvm-test-${label}-${randomBytes(4).toString('hex')}`;
}

/** Remove these images from podman's store when the test ends (whether it loaded them or not). */
export function removeFromPodman(t: ExecutionContext, ...references: string[]): void {
  t.teardown(async () => {
    await execa('podman', ['rmi', '--force', '--ignore', ...references], { reject: false });
  });
}
