// The guest agent (vm/agent.c and the subcommands in files of their own) compiled on demand into the
// cache, one per architecture, keyed by a hash of its sources, the compiler flags and the architecture:
// `${triplet}-gcc -static -Os` once per source change (architectures.ts names the compiler; a cross
// compiler for a foreign architecture); vm/build-initramfs does it at setup time. The host's own agent is
// also the host side of the vsock bridge.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { MissingToolError } from '../errors.js';
import { cacheDir } from '../cache-dir.js';
import { type ArchitectureRow, isNative } from './architectures.js';
import { assetPath } from './paths.js';
import { writeAtomically } from '../output.js';

/** -static: the initramfs has no libc; -Os: it is copied into every boot; -s: symbols are dead weight. */
const CFLAGS = ['-static', '-Os', '-s', '-Wall'];
/** the agent's C files, under vm/: one program */
const SOURCES = ['agent.c', 'upper-manifest.c', 'run-in-image.c'];

export interface AgentBinary {
  readonly path: string;
  /** sha256 of the source, flags and architecture: the agent's part of the initramfs hash */
  readonly sourceHash: string;
}

/** The agent's source files, as paths. */
export function agentSourceFiles(): string[] {
  return SOURCES.map((name) => assetPath('vm', name));
}

export async function agentSourceHash(row: ArchitectureRow): Promise<string> {
  const hash = createHash('sha256').update(JSON.stringify([row.architecture, CFLAGS]));
  for (const name of SOURCES) hash.update('\0').update(name).update('\0').update(await readFile(assetPath('vm', name)));
  return hash.digest('hex');
}

function agentPath(row: ArchitectureRow, sourceHash: string, env: NodeJS.ProcessEnv): string {
  return join(cacheDir(env), 'agent', sourceHash.slice(0, 16), 'dockvm-agent');
}

/** The compiler for `row`'s agent: CC (or cc) for the host's own architecture, else the row's cross compiler. */
function compilerFor(row: ArchitectureRow, env: NodeJS.ProcessEnv): string {
  return isNative(row) ? env.CC || 'cc' : row.compiler;
}

function compilerRemedy(row: ArchitectureRow): string {
  return isNative(row) ? 'install gcc and libc6-dev' : `install ${row.crossCompilerPackages.join(' ')} (apt-get install ${row.crossCompilerPackages.join(' ')})`;
}

/**
 * Throws the "install X" error when `row`'s agent is not compiled yet and its compiler is missing: what
 * a build checks before it starts (guest-platform.ts).
 */
export async function findAgentCompiler(row: ArchitectureRow, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  if (existsSync(agentPath(row, await agentSourceHash(row), env))) return;
  const cc = compilerFor(row, env);
  const probe = await execa(cc, ['--version'], { env, stdin: 'ignore', reject: false });
  if (probe.exitCode !== 0) throw new MissingToolError(`cannot run ${cc}, which compiles the ${row.architecture} guest's agent: ${compilerRemedy(row)}`, { command: cc });
}

const inFlight = new Map<string, Promise<AgentBinary>>();

/** The compiled agent for `row`; compiles it into the cache when missing (needs a C compiler with static libc). */
export async function ensureAgent(row: ArchitectureRow, env: NodeJS.ProcessEnv = process.env): Promise<AgentBinary> {
  const sourceHash = await agentSourceHash(row);
  const path = agentPath(row, sourceHash, env);
  if (existsSync(path)) return { path, sourceHash };
  // one compile per process even when several callers ask at once
  let building = inFlight.get(path);
  if (building === undefined) {
    building = compileAgent(row, path, sourceHash, env).finally(() => inFlight.delete(path));
    inFlight.set(path, building);
  }
  return building;
}

async function compileAgent(row: ArchitectureRow, path: string, sourceHash: string, env: NodeJS.ProcessEnv): Promise<AgentBinary> {
  await mkdir(join(path, '..'), { recursive: true });
  const cc = compilerFor(row, env);
  try {
    // two dockvm processes may compile at once: each into a temp file of its own, the rename makes one win
    await writeAtomically(path, (temp) => execa(cc, [...CFLAGS, '-o', temp, ...SOURCES.map((name) => assetPath('vm', name))], { env, stdin: 'ignore' }));
  } catch (err) {
    const detail = (err as { stderr?: string }).stderr?.trim().split('\n')[0] ?? String(err);
    throw new MissingToolError(`could not compile the ${row.architecture} guest agent ${assetPath('vm', 'agent.c')} with ${cc}: ${detail}; ${compilerRemedy(row)}`, {
      cause: err,
      command: cc,
    });
  }
  return { path, sourceHash };
}
