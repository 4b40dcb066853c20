// Which kernel modules the guest must insmod, in dependency order. Debian's package ships no
// modules.dep (depmod makes it at install time), so dependencies come from each module's own
// `.modinfo` "depends=" string; modules built into the kernel (modules.builtin) need no loading.
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { VmError } from '../errors.js';

/**
 * What the guest needs, by module name, each with the group that needs it. init loads a group's modules
 * only when the kernel command line names the group in `dockvm.load=` ("base" always): every module
 * costs boot time under TCG, so a VM without network or vsock does not load those.
 */
export const GUEST_MODULES: Readonly<Record<string, ModuleGroup>> = {
  virtio_mmio: 'mmio', // devices of the microvm machine
  virtio_pci: 'pci', // devices of the pc machine
  virtio_scsi: 'base', // every disk is a LUN of one virtio-scsi controller, hot-added (qemu.ts)
  sd_mod: 'base', // SCSI disks
  virtio_console: 'serial', // the virtio-serial agent port
  vmw_vsock_virtio_transport: 'vsock', // the vsock agent channel
  overlay: 'base', // lowers + upper of a build
  squashfs: 'base', // read-only layer images
  ext4: 'base', // the scratch disk
  virtio_net: 'net', // only when a build asks for network
  loop: 'loop', // lowers that share one disk, each at its offset (many layers)
};

export type ModuleGroup = 'base' | 'mmio' | 'pci' | 'serial' | 'vsock' | 'net' | 'loop';

export interface ModulePlan {
  /** modules to insmod, dependencies first: absolute path, module name, the groups that need it */
  readonly load: readonly { readonly name: string; readonly path: string; readonly groups: readonly ModuleGroup[] }[];
  /** wanted modules the kernel has built in */
  readonly builtin: readonly string[];
}

/** Module names compare with '-' and '_' as the same character, as the kernel does. */
function normalise(name: string): string {
  return name.replace(/-/g, '_');
}

async function listModules(dir: string): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  const walk = async (at: string): Promise<void> => {
    for (const entry of await readdir(at, { withFileTypes: true })) {
      const path = join(at, entry.name);
      if (entry.isDirectory()) await walk(path);
      else if (entry.name.endsWith('.ko')) found.set(normalise(entry.name.slice(0, -3)), path);
    }
  };
  await walk(dir);
  return found;
}

async function builtinModules(modulesDir: string): Promise<Set<string>> {
  const text = await readFile(join(modulesDir, 'modules.builtin'), 'utf8').catch(() => '');
  const names = new Set<string>();
  for (const line of text.split('\n')) {
    const base = line.trim().split('/').pop();
    if (base?.endsWith('.ko')) names.add(normalise(base.slice(0, -3)));
  }
  return names;
}

/** The "depends=" list of a module's .modinfo section: NUL-separated "key=value" strings. */
export function moduleDepends(ko: Buffer): string[] {
  const key = Buffer.from('\0depends=');
  const at = ko.indexOf(key);
  if (at < 0) return [];
  const end = ko.indexOf(0, at + key.length);
  const value = ko.subarray(at + key.length, end < 0 ? undefined : end).toString('latin1');
  return value === '' ? [] : value.split(',').map(normalise);
}

/** Resolve `wanted` against a `lib/modules/RELEASE` directory. */
export async function planModules(
  modulesDir: string,
  wanted: Readonly<Record<string, ModuleGroup>> = GUEST_MODULES,
): Promise<ModulePlan> {
  const available = await listModules(modulesDir);
  const builtin = await builtinModules(modulesDir);
  const load: { name: string; path: string; groups: ModuleGroup[] }[] = [];
  const seen = new Set<string>();
  const builtinWanted: string[] = [];
  let group: ModuleGroup = 'base';

  const visit = async (name: string, neededBy: string | undefined): Promise<void> => {
    if (seen.has(name)) {
      const known = load.find((m) => m.name === name);
      if (known && !known.groups.includes(group)) {
        known.groups.push(group);
        for (const dep of moduleDepends(await readFile(known.path))) await visit(dep, name);
      }
      return;
    }
    seen.add(name);
    if (builtin.has(name)) {
      if (neededBy === undefined) builtinWanted.push(name);
      return;
    }
    const path = available.get(name);
    if (path === undefined) {
      throw new VmError(
        `kernel module ${name}${neededBy ? ` (needed by ${neededBy})` : ''} is neither built in nor under ${modulesDir}; ` +
          'point DOCKVM_MODULES at the lib/modules/RELEASE directory of the kernel in DOCKVM_KERNEL',
      );
    }
    const entry = { name, path, groups: [group] };
    for (const dep of moduleDepends(await readFile(path))) await visit(dep, name);
    load.push(entry);
  };
  for (const [name, wantedGroup] of Object.entries(wanted)) {
    group = wantedGroup;
    await visit(normalise(name), undefined);
  }
  return { load, builtin: builtinWanted };
}
