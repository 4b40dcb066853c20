// The programs the guest runs that dockvm brings (the image may have none of them), put into the
// initramfs. GUEST_TOOL_SOURCES is the one place that says where each comes from.
//   busybox  init, the guest side's shell and utilities; and, for an image without a shell of its own,
//            the utilities a runAsRoot script finds at the end of its PATH
//   bash     the bash runAsRoot and extraCommands run with when the image has none (nixpkgs runs them
//            with its own bash), and `dockvm shell`'s bash
//   GNU tar  packs the overlay's upper directory and unpacks copyToRoot: busybox tar keeps neither
//            xattrs (security.capability, trusted.overlay.*) nor PAX records
// They are Debian's packages of the guest's architecture: for the host's own architecture, the ones
// installed on the host; for another (an arm64 guest on an amd64 host), the same packages of that
// architecture downloaded and unpacked into the cache by vm/fetch-packages, never installed.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { MissingToolError } from '../errors.js';
import { cacheDir } from '../cache-dir.js';
import { type ArchitectureRow, archEnv, isNative } from './architectures.js';
import { elfFacts, machineName } from './elf.js';
import { assetPath } from './paths.js';

export type GuestFile =
  /** source: the host file it was read from */
  | { readonly path: string; readonly type: 'file'; readonly data: Buffer; readonly mode: number; readonly source: string }
  | { readonly path: string; readonly type: 'symlink'; readonly target: string };

export type GuestTool = 'busybox' | 'bash' | 'tar';

interface ToolSource {
  /** overrides the path (DOCKVM_BUSYBOX for amd64, DOCKVM_BUSYBOX_ARM64 for arm64: archEnv) */
  readonly env: string;
  /** where the package puts it */
  readonly path: string;
  /** the Debian package that has it */
  readonly package: string;
}

/** Where each bundled program comes from: the same Debian packages for every architecture. */
export const GUEST_TOOL_SOURCES: Readonly<Record<GuestTool, ToolSource>> = {
  busybox: { env: 'DOCKVM_BUSYBOX', path: '/bin/busybox', package: 'busybox-static' },
  bash: { env: 'DOCKVM_BASH', path: '/bin/bash-static', package: 'bash-static' },
  tar: { env: 'DOCKVM_GNU_TAR', path: '/bin/tar', package: 'tar' },
};

/** The packages GNU tar's libraries come from (Debian bookworm's tar links libacl, libselinux, libc). */
const TAR_LIBRARY_PACKAGES = ['libc6', 'libacl1', 'libselinux1', 'libpcre2-8-0'];

/** The environment variables that pick another source for `row`: part of what names an initramfs. */
export function guestToolEnv(row: ArchitectureRow): string[] {
  return Object.values(GUEST_TOOL_SOURCES).map((source) => archEnv(row, source.env));
}

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

/** The root the guest's packages are found under: the host's own, or their unpacked copy in the cache. */
export function toolRoot(row: ArchitectureRow, env: NodeJS.ProcessEnv = process.env): string {
  return isNative(row) ? '/' : join(cacheDir(env), 'guest-tools', row.debian);
}

/** For a foreign architecture: download and unpack its packages into the cache (idempotent; quiet). */
export async function fetchGuestTools(row: ArchitectureRow, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  if (isNative(row)) return;
  const packages = [...Object.values(GUEST_TOOL_SOURCES).map((source) => source.package), ...TAR_LIBRARY_PACKAGES];
  const script = assetPath('vm', 'fetch-packages');
  const result = await execa(script, [row.debian, toolRoot(row, env), ...packages], { env, reject: false, stdin: 'ignore' });
  if (result.exitCode !== 0) {
    const why = (result.stderr || result.stdout || String(result.exitCode)).trim().split('\n').pop();
    throw new MissingToolError(`could not fetch the ${row.architecture} guest's tools (${packages.join(' ')}) with ${script}: ${why}`, {
      command: script,
      exitCode: result.exitCode ?? undefined,
    });
  }
}

/** What to do when a tool of `row` is missing or wrong. */
function remedy(row: ArchitectureRow, tool: GuestTool): string {
  const { package: pkg, env } = GUEST_TOOL_SOURCES[tool];
  const variable = archEnv(row, env);
  return isNative(row)
    ? `install ${pkg} (apt-get install ${pkg}) or set ${variable}`
    : `run ${assetPath('vm', 'build-initramfs')} --arch ${row.architecture} (it downloads Debian's ${row.debian} ${pkg}) or set ${variable}`;
}

async function sourcePath(row: ArchitectureRow, tool: GuestTool, env: NodeJS.ProcessEnv): Promise<string> {
  const source = GUEST_TOOL_SOURCES[tool];
  const override = env[archEnv(row, source.env)];
  if (override) return override;
  const path = join(toolRoot(row, env), source.path);
  if (!existsSync(path)) await fetchGuestTools(row, env);
  return path;
}

/** A program for the guest's CPU, and static where `mustBeStatic`: the initramfs has no libc for a dynamic one. */
async function readProgram(row: ArchitectureRow, tool: GuestTool, env: NodeJS.ProcessEnv, mustBeStatic: boolean): Promise<{ path: string; data: Buffer }> {
  const path = await sourcePath(row, tool, env);
  const data = await readFile(path).catch(() => undefined);
  if (data === undefined) throw new MissingToolError(`no ${tool} at ${path}; ${remedy(row, tool)}`);
  const elf = elfFacts(data);
  if (elf === undefined) throw new MissingToolError(`${path} is not a program (no ELF header); ${remedy(row, tool)}`);
  if (elf.machine !== row.elfMachine) {
    throw new MissingToolError(`${path} is a ${machineName(elf.machine)} program, but the ${row.architecture} guest runs ${machineName(row.elfMachine)} ones; ${remedy(row, tool)}`);
  }
  if (mustBeStatic && elf.interpreter !== undefined) {
    throw new MissingToolError(`${path} is dynamically linked (it needs ${elf.interpreter}); ${remedy(row, tool)} with a static ${tool}`);
  }
  return { path, data };
}

/** The static busybox to put in the guest. */
export function findBusybox(row: ArchitectureRow, env: NodeJS.ProcessEnv = process.env): Promise<{ path: string; data: Buffer }> {
  return readProgram(row, 'busybox', env, true);
}

/**
 * busybox's applet names (busybox itself left out), read from the binary rather than by running it (`busybox --list`), which a
 * host of another architecture cannot: busybox keeps them as one sorted run of NUL-terminated names,
 * "[", "[[", "acpid"… (applet_tables.h), ending at an empty one. A test checks the names against
 * `busybox --list` of the host's own.
 */
export function busyboxApplets(busybox: Buffer): string[] {
  const start = busybox.indexOf(Buffer.from('\0[\0[[\0', 'latin1'));
  if (start < 0) throw new MissingToolError('cannot find the applet names in busybox (no "[" applet): point DOCKVM_BUSYBOX at a Debian busybox-static');
  const names: string[] = [];
  let at = start + 1;
  for (;;) {
    const end = busybox.indexOf(0, at);
    if (end <= at) break;
    const name = busybox.toString('latin1', at, end);
    if (!/^[[\w.-]+$/.test(name)) break;
    names.push(name);
    at = end + 1;
  }
  return names.filter((name) => name !== 'busybox');
}

/** The bundled shell directory, and GNU tar with its libraries. `busybox` is the one findBusybox gave. */
export async function guestTools(row: ArchitectureRow, busybox: { path: string; data: Buffer }, env: NodeJS.ProcessEnv = process.env): Promise<GuestFile[]> {
  const bash = await readProgram(row, 'bash', env, true);
  const files: GuestFile[] = [
    { path: `${GUEST_SHELL_DIR}/bash`, type: 'file', data: bash.data, mode: 0o755, source: bash.path },
    { path: `${GUEST_SHELL_DIR}/sh`, type: 'symlink', target: 'bash' },
    { path: `${GUEST_SHELL_DIR}/busybox`, type: 'file', data: busybox.data, mode: 0o755, source: busybox.path },
  ];
  for (const name of [...new Set(busyboxApplets(busybox.data))].sort()) {
    if (!BUSYBOX_SHELLS.has(name)) files.push({ path: `${GUEST_SHELL_DIR}/${name}`, type: 'symlink', target: 'busybox' });
  }
  return [...files, ...(await gnuTar(row, env))];
}

async function gnuTar(row: ArchitectureRow, env: NodeJS.ProcessEnv): Promise<GuestFile[]> {
  const tar = await readProgram(row, 'tar', env, false);
  if (!tar.data.includes('GNU tar')) throw new MissingToolError(`${tar.path} is not GNU tar; ${remedy(row, 'tar')}`);
  const files: GuestFile[] = [{ path: GUEST_GNU_TAR, type: 'file', data: tar.data, mode: 0o755, source: tar.path }];
  const root = env[archEnv(row, GUEST_TOOL_SOURCES.tar.env)] ? '/' : toolRoot(row, env);
  for (const library of await sharedLibraries(tar.path, tar.data, row, root)) {
    files.push({ path: library.path, type: 'file', data: await readFile(library.file), mode: 0o755, source: library.file });
  }
  return files;
}

/**
 * The libraries `program` loads and its program interpreter, found the way the guest's dynamic loader
 * will find them (the multiarch directories, /lib first): `path` where the guest looks, `file` where
 * they are on the host (under `root`, the unpacked packages of a foreign architecture). Not ldd, which
 * runs the program's loader and so works for the host's own architecture only.
 */
async function sharedLibraries(program: string, data: Buffer, row: ArchitectureRow, root: string): Promise<{ path: string; file: string }[]> {
  const interpreter = elfFacts(data)?.interpreter;
  const found = new Map<string, string>();
  if (interpreter) found.set(interpreter.replace(/^\/+/, ''), join(root, interpreter));
  const searched = [`lib/${row.triplet}`, `usr/lib/${row.triplet}`, 'lib', 'usr/lib'];
  const queue = [program];
  const seen = new Set<string>();
  while (queue.length) {
    const file = queue.shift()!;
    for (const name of await neededLibraries(file)) {
      if (seen.has(name) || (interpreter && name === interpreter.slice(interpreter.lastIndexOf('/') + 1))) continue;
      seen.add(name);
      const dir = searched.find((candidate) => existsSync(join(root, candidate, name)));
      if (dir === undefined) throw new MissingToolError(`${program} needs ${name}, which is in none of ${searched.map((d) => join(root, d)).join(', ')}; ${remedy(row, 'tar')}`);
      found.set(`${dir}/${name}`, join(root, dir, name));
      queue.push(join(root, dir, name));
    }
  }
  return [...found].map(([path, file]) => ({ path, file })).sort((a, b) => (a.path < b.path ? -1 : 1));
}

/** DT_NEEDED of an ELF file of any architecture, as binutils' readelf lists them. */
async function neededLibraries(file: string): Promise<string[]> {
  const { stdout } = await execa('readelf', ['--dynamic', '--wide', file], { stdin: 'ignore', env: { ...process.env, LC_ALL: 'C' } }).catch((err: unknown) => {
    throw new MissingToolError(`cannot list the libraries of ${file} with readelf: install binutils`, { cause: err, command: 'readelf' });
  });
  return [...String(stdout).matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((match) => match[1]!);
}
