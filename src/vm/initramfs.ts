// The dockvm initramfs of one architecture (the kernel's): busybox, vm/init, the agent and the kernel
// modules the guest loads, as one deterministic newc cpio in the cache, named by a hash of every input
// (the architecture among them). Rebuilt only when an input changes; the same inputs give the same bytes.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { agentSourceFiles, agentSourceHash, ensureAgent } from './agent-binary.js';
import { memoized } from './file-memo.js';
import { busyboxApplets, findBusybox, GUEST_SHELL_DIR, guestToolEnv, guestTools } from './guest-tools.js';
import { ARCHITECTURES } from './architectures.js';
import { type CpioEntry, writeCpio } from './cpio.js';
import type { GuestKernel } from './kernel.js';
import { GUEST_MODULES, type ModuleGroup, planModules } from './modules.js';
import { cacheDir } from '../cache-dir.js';
import { assetPath } from './paths.js';
import { writeAtomically } from '../output.js';

/** Bump when the layout below changes in a way the other inputs do not show. */
export const INITRAMFS_RECIPE_VERSION = 4;

/** What init mounts with one `mount -a`. */
const FSTAB = [
  'proc /proc proc defaults 0 0',
  'sysfs /sys sysfs defaults 0 0',
  'cgroup2 /sys/fs/cgroup cgroup2 defaults 0 0',
  'devtmpfs /dev devtmpfs defaults 0 0',
  'tmpfs /tmp tmpfs mode=1777 0 0',
  'tmpfs /run tmpfs mode=0755 0 0',
  '',
].join('\n');

/**
 * Uncompressed by default: measured here under TCG (7 interleaved boots each, busy 2-core host), agent
 * ready in a median 1594 ms from the 4.0 MB plain cpio against 1783 ms from its 1.7 MB gzip: inflating
 * in the emulated CPU costs more than copying the extra bytes. The file only lives in the local cache.
 */
export type InitramfsCompression = 'none' | 'gzip';

export interface InitramfsOptions {
  readonly kernel: GuestKernel;
  readonly compression?: InitramfsCompression;
  readonly env?: NodeJS.ProcessEnv;
  /** modules to include, by name, with the group that loads them (default: GUEST_MODULES) */
  readonly modules?: Readonly<Record<string, ModuleGroup>>;
}

export interface Initramfs {
  readonly path: string;
  readonly hash: string;
  /** modules the init insmods, in order */
  readonly modules: readonly string[];
  /** false when this call found it in the cache */
  readonly built: boolean;
}

/** Where the initramfs for these inputs lives, and whether it is built, without building anything. */
export async function planInitramfs(options: InitramfsOptions): Promise<{ path: string; hash: string; modules: string[]; cached: boolean }> {
  const found = await identify(options);
  return { ...found, cached: existsSync(found.path) };
}

/**
 * The initramfs's name and hash for these inputs: hashed from the files (and helper programs: busybox's
 * applet list, ldd) once, then remembered while none of those files changes (file-memo.ts).
 */
function identify(options: InitramfsOptions): Promise<{ path: string; hash: string; modules: string[] }> {
  const env = options.env ?? process.env;
  const key = [INITRAMFS_RECIPE_VERSION, options.compression ?? 'none', options.modules ?? GUEST_MODULES, options.kernel, cacheDir(env), ...guestToolEnv(ARCHITECTURES[options.kernel.architecture]).map((name) => env[name] ?? '')];
  return memoized(
    'initramfs',
    key,
    async () => {
      const inputs = await gatherInputs(options);
      return { value: { path: inputs.path, hash: inputs.digest, modules: inputs.moduleFiles.map((m) => m.name) }, files: inputs.sources };
    },
    { env },
  );
}

async function gatherInputs(options: InitramfsOptions) {
  const env = options.env ?? process.env;
  const row = ARCHITECTURES[options.kernel.architecture];
  const compression = options.compression ?? 'none';
  const init = await readFile(assetPath('vm', 'init'));
  const agentHash = await agentSourceHash(row);
  const busybox = await findBusybox(row, env);
  const plan = options.kernel.modulesDir === null ? { load: [] } : await planModules(options.kernel.modulesDir, options.modules ?? GUEST_MODULES);
  const moduleFiles = await Promise.all(plan.load.map(async (m) => ({ name: m.name, groups: m.groups, path: m.path, data: await readFile(m.path) })));

  const hash = createHash('sha256');
  const part = (label: string, data: Buffer | string): void => {
    hash.update(`${label}\0${Buffer.byteLength(data)}\0`).update(data);
  };
  part('recipe', String(INITRAMFS_RECIPE_VERSION));
  part('architecture', row.architecture);
  part('compression', compression);
  part('init', init);
  part('agent', agentHash);
  part('busybox', busybox.data);
  for (const m of moduleFiles) part(`module:${m.name}:${m.groups.join(',')}`, m.data);
  const tools = await guestTools(row, busybox, env);
  for (const tool of tools) part(`tool:${tool.path}`, tool.type === 'file' ? tool.data : `-> ${tool.target}`);
  const digest = hash.digest('hex');
  const dir = join(cacheDir(env), 'initramfs');
  const path = join(dir, `${digest.slice(0, 32)}.cpio${compression === 'gzip' ? '.gz' : ''}`);
  // every file the digest was made from (and the one that says which modules are built in)
  const sources = [
    assetPath('vm', 'init'),
    ...agentSourceFiles(),
    busybox.path,
    ...moduleFiles.map((m) => m.path),
    ...(options.kernel.modulesDir !== null && existsSync(join(options.kernel.modulesDir, 'modules.builtin')) ? [join(options.kernel.modulesDir, 'modules.builtin')] : []),
    ...tools.flatMap((tool) => (tool.type === 'file' ? [tool.source] : [])),
  ];
  return { env, row, compression, init, busybox, moduleFiles, tools, digest, dir, path, sources };
}

/**
 * Found initramfs files by their inputs' description, for this process: hashing the inputs reads ~10 MB
 * and runs helper programs, which every boot would otherwise pay for again.
 */
const found = new Map<string, Initramfs>();

/** Find or build the initramfs for `kernel`. */
export async function ensureInitramfs(options: InitramfsOptions): Promise<Initramfs> {
  const env = options.env ?? process.env;
  const tools = guestToolEnv(ARCHITECTURES[options.kernel.architecture]);
  const key = JSON.stringify([options.kernel, options.compression ?? 'none', options.modules ?? null, cacheDir(env), ...tools.map((name) => env[name] ?? '')]);
  const known = found.get(key);
  if (known && existsSync(known.path)) return { ...known, built: false };
  const result = await findOrBuild(options);
  found.set(key, result);
  return result;
}

async function findOrBuild(options: InitramfsOptions): Promise<Initramfs> {
  const known = await identify(options);
  if (existsSync(known.path)) return { ...known, built: false };
  const { env, row, compression, init, busybox, moduleFiles, tools, digest, dir, path } = await gatherInputs(options);
  const modules = moduleFiles.map((m) => m.name);
  if (existsSync(path)) return { path, hash: digest, modules, built: false };
  const agent = await ensureAgent(row, env);

  const entries: CpioEntry[] = [];
  const dirs = new Set<string>();
  const addDir = (p: string): void => {
    const parts = p.split('/');
    for (let i = 1; i <= parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
  };
  for (const d of ['dev', 'proc', 'sys', 'tmp', 'run', 'root', 'mnt', 'etc', 'lib/modules', 'bin', 'usr']) addDir(d);
  entries.push({ path: 'init', type: 'file', mode: 0o755, data: init });
  entries.push({ path: 'etc/fstab', type: 'file', mode: 0o644, data: Buffer.from(FSTAB) });
  // the kernel opens /dev/console for init's stdio before init can mount devtmpfs
  entries.push({ path: 'dev/console', type: 'chardev', mode: 0o600, major: 5, minor: 1 });
  // busybox itself lies in the bundled shell directory (guest-tools.ts), which the image sees too
  entries.push({ path: 'bin/busybox', type: 'symlink', target: `/${GUEST_SHELL_DIR}/busybox` });
  entries.push({ path: 'bin/dockvm-agent', type: 'file', mode: 0o755, data: await readFile(agent.path) });
  // Every applet in /bin, and /sbin, /usr/bin, /usr/sbin links to it (a merged /usr): the names come from
  // the binary (guest-tools.ts), which a host of another architecture cannot ask for their directories.
  for (const name of new Set(busyboxApplets(busybox.data))) entries.push({ path: `bin/${name}`, type: 'symlink', target: 'busybox' });
  entries.push({ path: 'sbin', type: 'symlink', target: 'bin' }, { path: 'usr/bin', type: 'symlink', target: '../bin' }, { path: 'usr/sbin', type: 'symlink', target: '../bin' });
  for (const tool of tools) {
    addDir(tool.path.split('/').slice(0, -1).join('/'));
    entries.push(tool.type === 'file' ? { path: tool.path, type: 'file', mode: tool.mode, data: tool.data } : tool);
  }
  for (const m of moduleFiles) entries.push({ path: `lib/modules/${m.name}.ko`, type: 'file', mode: 0o644, data: m.data });
  entries.push({ path: 'lib/modules/modules.load', type: 'file', mode: 0o644, data: Buffer.from(moduleFiles.map((m) => `${m.name}.ko ${m.groups.join(',')}\n`).join('')) });
  for (const d of dirs) if (d !== '') entries.push({ path: d, type: 'dir', mode: d === 'tmp' ? 0o1777 : 0o755 });

  const cpio = writeCpio(entries);
  const bytes = compression === 'gzip' ? gzipSync(cpio, { level: 9 }) : cpio;
  await mkdir(dir, { recursive: true });
  await writeAtomically(path, (temp) => writeFile(temp, bytes));
  return { path, hash: digest, modules, built: true };
}
