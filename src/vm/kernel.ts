// The guest kernel: DOCKVM_KERNEL (+ DOCKVM_MODULES) when set, else Debian's linux-image-cloud-amd64
// unpacked into the cache by kernel/fetch (apt-get download + dpkg-deb -x, no root needed).
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { execa } from 'execa';
import { MissingToolError, VmError } from '../errors.js';
import { cacheDir } from '../cache-dir.js';
import { assetPath } from './paths.js';

export interface GuestKernel {
  /** the bzImage QEMU boots */
  readonly kernel: string;
  /** lib/modules/RELEASE of that kernel; null when everything needed is built in */
  readonly modulesDir: string | null;
  /** `uname -r` of the guest, when known */
  readonly release: string;
  /** where it came from, for doctor and messages */
  readonly source: 'DOCKVM_KERNEL' | 'debian-cloud';
}

interface FetchedKernel {
  release: string;
  package: string;
  version: string;
}

export function debianKernelDir(env: NodeJS.ProcessEnv = process.env): string {
  return join(cacheDir(env), 'kernel', 'debian-cloud');
}

export interface ResolveKernelOptions {
  env?: NodeJS.ProcessEnv;
  /** run kernel/fetch when the cache has no kernel yet (default true) */
  fetch?: boolean;
}

export async function resolveKernel(options: ResolveKernelOptions = {}): Promise<GuestKernel> {
  const env = options.env ?? process.env;
  if (env.DOCKVM_KERNEL) {
    if (!existsSync(env.DOCKVM_KERNEL)) throw new VmError(`DOCKVM_KERNEL=${env.DOCKVM_KERNEL} does not exist`);
    const modulesDir = env.DOCKVM_MODULES || null;
    if (modulesDir !== null && !existsSync(modulesDir)) {
      throw new VmError(`DOCKVM_MODULES=${modulesDir} does not exist; point it at the kernel's lib/modules/RELEASE directory`);
    }
    return { kernel: env.DOCKVM_KERNEL, modulesDir, release: modulesDir ? basename(modulesDir) : 'custom', source: 'DOCKVM_KERNEL' };
  }
  const dir = debianKernelDir(env);
  let info = await readFetched(dir);
  if (info === undefined && options.fetch !== false) {
    await fetchDebianKernel(env);
    info = await readFetched(dir);
  }
  if (info === undefined) {
    throw new MissingToolError(
      `no guest kernel in ${dir}; run ${assetPath('kernel', 'fetch')} (needs apt-get and dpkg-deb) or set DOCKVM_KERNEL`,
    );
  }
  return {
    kernel: join(dir, 'boot', `vmlinuz-${info.release}`),
    modulesDir: join(dir, 'lib', 'modules', info.release),
    release: info.release,
    source: 'debian-cloud',
  };
}

async function readFetched(dir: string): Promise<FetchedKernel | undefined> {
  try {
    return JSON.parse(await readFile(join(dir, 'kernel.json'), 'utf8')) as FetchedKernel;
  } catch {
    return undefined;
  }
}

/** Run kernel/fetch (idempotent): download and unpack the Debian cloud kernel into the cache. */
export async function fetchDebianKernel(env: NodeJS.ProcessEnv = process.env): Promise<void> {
  const script = assetPath('kernel', 'fetch');
  const result = await execa(script, [], { env, reject: false, stdin: 'ignore' });
  if (result.exitCode !== 0) {
    const why = (result.stderr || result.stdout || String(result.exitCode)).trim().split('\n').pop();
    throw new MissingToolError(`could not fetch the guest kernel with ${script}: ${why}`, { command: script, exitCode: result.exitCode ?? undefined });
  }
}
