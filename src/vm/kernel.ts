// The guest kernel of an architecture: DOCKVM_KERNEL (+ DOCKVM_MODULES; DOCKVM_KERNEL_ARM64… for other
// rows: archEnv) when set, else the row's Debian package (linux-image-cloud-amd64, -arm64) unpacked into
// the cache by kernel/fetch (apt-get download + dpkg-deb -x, no root needed).
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { execa } from 'execa';
import { MissingToolError, VmError } from '../errors.js';
import { cacheDir } from '../cache-dir.js';
import { assetPath } from './paths.js';
import { type Architecture, type ArchitectureRow, archEnv, defaultArchitecture } from './architectures.js';

export interface GuestKernel {
  /** the architecture it runs on */
  readonly architecture: Architecture;
  /** the file QEMU boots (a bzImage, an arm64 Image) */
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

export function debianKernelDir(row: ArchitectureRow, env: NodeJS.ProcessEnv = process.env): string {
  return join(cacheDir(env), 'kernel', `debian-cloud-${row.debian}`);
}

export interface ResolveKernelOptions {
  env?: NodeJS.ProcessEnv;
  /** whose kernel (default: the host's architecture) */
  architecture?: ArchitectureRow;
  /** run kernel/fetch when the cache has no kernel yet (default true) */
  fetch?: boolean;
}

export async function resolveKernel(options: ResolveKernelOptions = {}): Promise<GuestKernel> {
  const env = options.env ?? process.env;
  const row = options.architecture ?? defaultArchitecture();
  const [kernelVariable, modulesVariable] = [archEnv(row, 'DOCKVM_KERNEL'), archEnv(row, 'DOCKVM_MODULES')];
  const custom = env[kernelVariable];
  if (custom) {
    if (!existsSync(custom)) throw new VmError(`${kernelVariable}=${custom} does not exist`);
    const modulesDir = env[modulesVariable] || null;
    if (modulesDir !== null && !existsSync(modulesDir)) {
      throw new VmError(`${modulesVariable}=${modulesDir} does not exist; point it at the kernel's lib/modules/RELEASE directory`);
    }
    return { architecture: row.architecture, kernel: custom, modulesDir, release: modulesDir ? basename(modulesDir) : 'custom', source: 'DOCKVM_KERNEL' };
  }
  const dir = debianKernelDir(row, env);
  let info = await readFetched(dir);
  if (info === undefined && options.fetch !== false) {
    await fetchDebianKernel(row, env);
    info = await readFetched(dir);
  }
  if (info === undefined) {
    throw new MissingToolError(
      `no ${row.architecture} guest kernel in ${dir}; run ${assetPath('kernel', 'fetch')} --arch ${row.debian} (needs apt-get and dpkg-deb) or set ${kernelVariable}`,
    );
  }
  return {
    architecture: row.architecture,
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

/** Run kernel/fetch (idempotent): download and unpack the row's Debian cloud kernel into the cache. */
export async function fetchDebianKernel(row: ArchitectureRow = defaultArchitecture(), env: NodeJS.ProcessEnv = process.env): Promise<void> {
  const script = assetPath('kernel', 'fetch');
  const result = await execa(script, ['--arch', row.debian], { env, reject: false, stdin: 'ignore' });
  if (result.exitCode !== 0) {
    const why = (result.stderr || result.stdout || String(result.exitCode)).trim().split('\n').pop();
    throw new MissingToolError(`could not fetch the ${row.architecture} guest kernel with ${script}: ${why}`, { command: script, exitCode: result.exitCode ?? undefined });
  }
}
