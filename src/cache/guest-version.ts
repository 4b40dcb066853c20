// The version of dockvm's guest, for the keys of steps run in the VM: what decides what the guest does
// with a step besides the step itself. The initramfs's hash (busybox, init, the agent's source, the kernel
// modules, GNU tar and its libraries, the recipe: src/vm/initramfs.ts), the kernel booted, and the guest-side
// scripts read at run time rather than built into the initramfs (vm/build/: guest.sh, which mounts, runs
// and packs each step). One per architecture: each has its own kernel and initramfs. Not the
// accelerator, machine or transport: KVM and TCG give the same bytes.
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { planInitramfs } from '../vm/initramfs.js';
import { resolveKernel } from '../vm/kernel.js';
import { ARCHITECTURES, type Architecture, defaultArchitecture } from '../vm/architectures.js';
import { guestToolEnv } from '../vm/guest-tools.js';
import { assetPath } from '../vm/paths.js';
import { hashFile } from './file-hash.js';

/** Computed once per process and environment: it reads ~20 MB and runs ldd (about 0.1 s). */
const known = new Map<string, Promise<string>>();

/** "sha256:…" naming this dockvm's guest of `architecture` for `env` (its DOCKVM_KERNEL, DOCKVM_BUSYBOX, DOCKVM_GNU_TAR…). */
export function guestVersion(env: NodeJS.ProcessEnv = process.env, architecture: Architecture = defaultArchitecture().architecture): Promise<string> {
  const row = ARCHITECTURES[architecture];
  const pieces = ['DOCKVM_KERNEL', 'DOCKVM_MODULES'].map((name) => `${name}${row.envSuffix}`).concat(guestToolEnv(row));
  const id = JSON.stringify([architecture, env.DOCKVM_CACHE, env.XDG_CACHE_HOME, ...pieces.map((name) => env[name])]);
  let version = known.get(id);
  if (!version) {
    version = computeGuestVersion(env, architecture);
    known.set(id, version);
    version.catch(() => known.delete(id));
  }
  return version;
}

async function computeGuestVersion(env: NodeJS.ProcessEnv, architecture: Architecture): Promise<string> {
  const kernel = await resolveKernel({ env, architecture: ARCHITECTURES[architecture] });
  const [initramfs, kernelDigest, scripts] = await Promise.all([planInitramfs({ kernel, env }), hashFile(kernel.kernel), guestScripts()]);
  const hash = createHash('sha256');
  const part = (label: string, data: Buffer | string) => hash.update(`${label}\0${Buffer.byteLength(data)}\0`).update(data);
  part('initramfs', initramfs.hash);
  part('kernel', kernelDigest);
  for (const [name, data] of scripts) part(`vm/build/${name}`, data);
  return `sha256:${hash.digest('hex')}`;
}

/** Every file of vm/build/, by name: what build-vm.ts sends the guest step by step. */
async function guestScripts(): Promise<[string, Buffer][]> {
  const dir = assetPath('vm', 'build');
  const names = (await readdir(dir, { withFileTypes: true })).filter((entry) => entry.isFile()).map((entry) => entry.name).sort();
  return Promise.all(names.map(async (name): Promise<[string, Buffer]> => [name, await readFile(join(dir, name))]));
}
