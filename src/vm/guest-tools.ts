// The programs the guest runs that dockvm brings (the image may have none of them), taken from the host
// and put into the initramfs. GUEST_TOOL_SOURCES is the one place that says where each comes from.
//   busybox  init, the guest side's shell and utilities; and, for an image without a shell of its own,
//            the utilities a runAsRoot script finds at the end of its PATH
//   bash     the bash runAsRoot and extraCommands run with when the image has none (nixpkgs runs them
//            with its own bash), and the launcher that starts every command inside the image
//   GNU tar  packs the overlay's upper directory and unpacks copyToRoot: busybox tar keeps neither
//            xattrs (security.capability, trusted.overlay.*) nor PAX records
import { readFile } from 'node:fs/promises';
import { execa } from 'execa';
import { MissingToolError } from '../errors.js';
import { GUEST_ARCHITECTURE } from './guest-platform.js';

export type GuestFile =
  /** source: the host file it was read from */
  | { readonly path: string; readonly type: 'file'; readonly data: Buffer; readonly mode: number; readonly source: string }
  | { readonly path: string; readonly type: 'symlink'; readonly target: string };

interface ToolSource {
  /** overrides the path */
  readonly env: string;
  readonly path: string;
  /** the Debian package that has it, for the "install it" message */
  readonly package: string;
}

/**
 * Where each bundled program comes from, per guest architecture. amd64 guests run on amd64 hosts, so the
 * host's own (static) Debian packages serve; an arm64 row would name Debian's arm64 packages, downloaded
 * and unpacked, never installed.
 */
export const GUEST_TOOL_SOURCES: Readonly<Record<typeof GUEST_ARCHITECTURE, Readonly<Record<'busybox' | 'bash' | 'tar', ToolSource>>>> = {
  amd64: {
    busybox: { env: 'DOCKVM_BUSYBOX', path: '/bin/busybox', package: 'busybox-static' },
    bash: { env: 'DOCKVM_BASH', path: '/bin/bash-static', package: 'bash-static' },
    tar: { env: 'DOCKVM_GNU_TAR', path: '/bin/tar', package: 'tar' },
  },
};

/** The environment variables that pick another source: part of what names an initramfs. */
export const GUEST_TOOL_ENV = Object.values(GUEST_TOOL_SOURCES[GUEST_ARCHITECTURE]).map((source) => source.env);

/** Where GNU tar lives in the guest (vm/build/guest.sh uses this path; busybox owns /bin/tar). */
export const GUEST_GNU_TAR = 'usr/lib/dockvm/tar';

/**
 * The bundled tools as the build VM bind-mounts them into the image (at /.dockvm, read-only, gone after
 * the run: vm/build/guest.sh): bash, `sh` (bash again, so that no busybox shell, whose applets would
 * shadow the image's programs, runs in the image), busybox and its applets as relative links.
 */
export const GUEST_SHELL_DIR = 'usr/lib/dockvm/shell';

/** Shells busybox offers that the bundled directory leaves to bash. */
const BUSYBOX_SHELLS = new Set(['sh', 'ash', 'hush', 'bash']);

function sourcePath(tool: 'busybox' | 'bash' | 'tar', env: NodeJS.ProcessEnv): ToolSource & { resolved: string } {
  const source = GUEST_TOOL_SOURCES[GUEST_ARCHITECTURE][tool];
  return { ...source, resolved: env[source.env] || source.path };
}

/** A static program: the initramfs has no libc for a dynamic one, and the image's may not fit it. */
async function readStatic(tool: 'busybox' | 'bash', env: NodeJS.ProcessEnv): Promise<{ path: string; data: Buffer }> {
  const { resolved: path, package: pkg, env: variable } = sourcePath(tool, env);
  const data = await readFile(path).catch(() => undefined);
  if (data === undefined) throw new MissingToolError(`no ${tool} at ${path}; install ${pkg} (apt-get install ${pkg}) or set ${variable}`);
  // A dynamically linked program names its program interpreter.
  if (data.includes('/lib64/ld-linux') || data.includes('/lib/ld-linux')) {
    throw new MissingToolError(`${path} is dynamically linked; install ${pkg} (apt-get install ${pkg}) or point ${variable} at a static ${tool}`);
  }
  return { path, data };
}

/** The static busybox to put in the guest. */
export function findBusybox(env: NodeJS.ProcessEnv = process.env): Promise<{ path: string; data: Buffer }> {
  return readStatic('busybox', env);
}

/** busybox's applets as absolute paths (/bin/ls, /usr/bin/env…), busybox itself left out. */
export async function busyboxApplets(path: string): Promise<string[]> {
  const { stdout } = await execa(path, ['--list-full'], { stdin: 'ignore' });
  return stdout.split('\n').map((line) => line.trim()).filter((line) => line !== '' && !line.endsWith('/busybox'));
}

/** The bundled shell directory, and GNU tar with its libraries. `busybox` is the one findBusybox gave. */
export async function guestTools(busybox: { path: string; data: Buffer }, env: NodeJS.ProcessEnv = process.env): Promise<GuestFile[]> {
  const bash = await readStatic('bash', env);
  const files: GuestFile[] = [
    { path: `${GUEST_SHELL_DIR}/bash`, type: 'file', data: bash.data, mode: 0o755, source: bash.path },
    { path: `${GUEST_SHELL_DIR}/sh`, type: 'symlink', target: 'bash' },
    { path: `${GUEST_SHELL_DIR}/busybox`, type: 'file', data: busybox.data, mode: 0o755, source: busybox.path },
  ];
  const names = new Set((await busyboxApplets(busybox.path)).map((applet) => applet.slice(applet.lastIndexOf('/') + 1)));
  for (const name of [...names].sort()) {
    if (!BUSYBOX_SHELLS.has(name)) files.push({ path: `${GUEST_SHELL_DIR}/${name}`, type: 'symlink', target: 'busybox' });
  }
  return [...files, ...(await gnuTar(env))];
}

async function gnuTar(env: NodeJS.ProcessEnv): Promise<GuestFile[]> {
  const { resolved: tar, package: pkg, env: variable } = sourcePath('tar', env);
  const version = await execa(tar, ['--version'], { stdin: 'ignore', reject: false });
  if (version.exitCode !== 0 || !String(version.stdout).includes('GNU tar')) {
    throw new MissingToolError(`${tar} is not GNU tar; install ${pkg} (apt-get install ${pkg}) or point ${variable} at GNU tar`);
  }
  const files: GuestFile[] = [{ path: GUEST_GNU_TAR, type: 'file', data: await readFile(tar), mode: 0o755, source: tar }];
  for (const library of await sharedLibraries(tar)) {
    files.push({ path: library.replace(/^\/+/, ''), type: 'file', data: await readFile(library), mode: 0o755, source: library });
  }
  return files;
}

/** The absolute paths of the libraries (and the program interpreter) `program` loads, as ldd lists them. */
async function sharedLibraries(program: string): Promise<string[]> {
  const { stdout } = await execa('ldd', [program], { stdin: 'ignore' });
  const paths: string[] = [];
  for (const line of String(stdout).split('\n')) {
    const match = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line);
    if (match) paths.push(match[1]!);
  }
  return paths.sort();
}
