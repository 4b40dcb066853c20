// The guest agent (vm/agent.c and the subcommands in files of their own) compiled on demand into the cache,
// keyed by a hash of its sources and the compiler flags: `cc -static -Os` once per source change;
// vm/build-initramfs does it at setup time.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { MissingToolError } from '../errors.js';
import { cacheDir } from '../cache-dir.js';
import { assetPath } from './paths.js';
import { writeAtomically } from '../output.js';

/** -static: the initramfs has no libc; -Os: it is copied into every boot; -s: symbols are dead weight. */
const CFLAGS = ['-static', '-Os', '-s', '-Wall'];
/** the agent's C files, under vm/: one program */
const SOURCES = ['agent.c', 'upper-manifest.c', 'run-in-image.c'];

export interface AgentBinary {
  readonly path: string;
  /** sha256 of the source and flags: the agent's part of the initramfs hash */
  readonly sourceHash: string;
}

/** The agent's source files, as paths. */
export function agentSourceFiles(): string[] {
  return SOURCES.map((name) => assetPath('vm', name));
}

export async function agentSourceHash(): Promise<string> {
  const hash = createHash('sha256').update(JSON.stringify(CFLAGS));
  for (const name of SOURCES) hash.update('\0').update(name).update('\0').update(await readFile(assetPath('vm', name)));
  return hash.digest('hex');
}

const inFlight = new Map<string, Promise<AgentBinary>>();

/** The compiled agent; compiles it into the cache when missing (needs a C compiler with static libc). */
export async function ensureAgent(env: NodeJS.ProcessEnv = process.env): Promise<AgentBinary> {
  const sourceHash = await agentSourceHash();
  const dir = join(cacheDir(env), 'agent', sourceHash.slice(0, 16));
  const path = join(dir, 'dockvm-agent');
  if (existsSync(path)) return { path, sourceHash };
  // one compile per process even when several callers ask at once
  let building = inFlight.get(path);
  if (building === undefined) {
    building = compileAgent(dir, path, sourceHash, env).finally(() => inFlight.delete(path));
    inFlight.set(path, building);
  }
  return building;
}

async function compileAgent(dir: string, path: string, sourceHash: string, env: NodeJS.ProcessEnv): Promise<AgentBinary> {
  await mkdir(dir, { recursive: true });
  const cc = env.CC || 'cc';
  try {
    // two dockvm processes may compile at once: each into a temp file of its own, the rename makes one win
    await writeAtomically(path, (temp) => execa(cc, [...CFLAGS, '-o', temp, ...SOURCES.map((name) => assetPath('vm', name))], { env, stdin: 'ignore' }));
  } catch (err) {
    const detail = (err as { stderr?: string }).stderr?.trim().split('\n')[0] ?? String(err);
    throw new MissingToolError(
      `could not compile the guest agent ${assetPath('vm', 'agent.c')} with ${cc}: ${detail}; install gcc and libc6-dev`,
      { cause: err, command: cc },
    );
  }
  return { path, sourceHash };
}
