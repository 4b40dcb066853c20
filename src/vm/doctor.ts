// What this host has for running build VMs: QEMU, the guest kernel and modules, the initramfs, KVM (probed
// with a real boot, not guessed from /dev/kvm), the agent transport, and the cache. Each missing piece
// comes with what to install.
import { existsSync } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { DockvmError } from '../errors.js';
import { chooseAccel, kvmDevicePresent } from './accel.js';
import { ensureAgent } from './agent-binary.js';
import { type BootImage, bootImage } from './boot-image.js';
import { ensureInitramfs, findBusybox, planInitramfs } from './initramfs.js';
import { type GuestKernel, resolveKernel } from './kernel.js';
import { planModules } from './modules.js';
import { cacheDir } from '../cache-dir.js';
import { assetPath } from './paths.js';
import { type Accel, type QemuBinary, findQemu } from './qemu.js';
import { bootVm, chooseTransport, type Transport } from './vm.js';

export interface DoctorReport {
  qemu: { path: string; version: string } | null;
  kernel: {
    source: GuestKernel['source'];
    path: string;
    release: string;
    modulesDir: string | null;
    /** modules the guest insmods */
    modules: string[];
    /** wanted drivers the kernel has built in */
    builtin: string[];
    /** what QEMU boots: the extracted vmlinux (pvh, faster) or the bzImage */
    boot: BootImage;
  } | null;
  initramfs: { path: string; state: 'cached' | 'built now' } | null;
  kvm: {
    /** /dev/kvm exists and is ours to open */
    device: boolean;
    /** a KVM guest reached its agent (probed, or the cached verdict); null when not probed */
    usable: boolean | null;
  };
  /** what VMs will use; null when no VM can boot yet */
  accel: Accel | null;
  /** why that accel: DOCKVM_ACCEL, no /dev/kvm, probe, cached probe */
  accelReason: string | null;
  transport: Transport;
  cache: { dir: string; bytes: number };
  /** one line per problem, each saying what to do */
  missing: string[];
  ok: boolean;
}

async function du(path: string): Promise<number> {
  let total = 0;
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      const p = join(dir, entry.name);
      if (entry.isDirectory()) await walk(p);
      else total += (await stat(p).catch(() => ({ blocks: 0 }))).blocks * 512;
    }
  };
  await walk(path);
  return total;
}

function problem(err: unknown): string {
  return err instanceof DockvmError ? err.message : `unexpected: ${String(err)}`;
}

export interface DoctorOptions {
  env?: NodeJS.ProcessEnv;
  /** notices from the KVM probe (default: stderr) */
  onNotice?: (line: string) => void;
}

export async function doctor(options: DoctorOptions = {}): Promise<DoctorReport> {
  const env = options.env ?? process.env;
  const missing: string[] = [];
  const dir = cacheDir(env);

  let qemu: QemuBinary | undefined;
  try {
    qemu = await findQemu(env);
    if (!existsSync('/usr/share/qemu/bios-microvm.bin') && !existsSync('/usr/share/seabios/bios-microvm.bin') && env.DOCKVM_MACHINE !== 'pc') {
      missing.push('QEMU lacks the microvm firmware (bios-microvm.bin): install qemu-system-x86 from Debian, or set DOCKVM_MACHINE=pc');
    }
  } catch (err) {
    missing.push(problem(err));
  }

  let kernel: GuestKernel | undefined;
  let kernelReport: DoctorReport['kernel'] = null;
  try {
    kernel = await resolveKernel({ env, fetch: false });
    if (!existsSync(kernel.kernel)) throw new DockvmError(`the guest kernel ${kernel.kernel} is missing; run ${assetPath('kernel', 'fetch')} --refresh`);
    const plan = kernel.modulesDir === null ? { load: [], builtin: [] } : await planModules(kernel.modulesDir);
    kernelReport = {
      source: kernel.source,
      path: kernel.kernel,
      release: kernel.release,
      modulesDir: kernel.modulesDir,
      modules: plan.load.map((m) => m.name),
      builtin: [...plan.builtin],
      boot: await bootImage(kernel, env),
    };
  } catch (err) {
    kernel = undefined;
    missing.push(problem(err));
  }

  try {
    await findBusybox(env);
  } catch (err) {
    missing.push(problem(err));
  }

  let initramfs: DoctorReport['initramfs'] = null;
  let initramfsHash: string | undefined;
  if (kernel) {
    try {
      const planned = await planInitramfs({ kernel, env });
      if (planned.cached) initramfs = { path: planned.path, state: 'cached' };
      else {
        await ensureAgent(env);
        const built = await ensureInitramfs({ kernel, env });
        initramfs = { path: built.path, state: 'built now' };
      }
      initramfsHash = planned.hash;
    } catch (err) {
      missing.push(problem(err));
    }
  }

  let transport: Transport = 'serial';
  try {
    transport = chooseTransport(env);
  } catch (err) {
    missing.push(problem(err));
  }

  const device = kvmDevicePresent();
  let accel: Accel | null = null;
  let accelReason: string | null = null;
  let usable: boolean | null = null;
  if (qemu && kernel && initramfs && initramfsHash) {
    const agent = await ensureAgent(env);
    const machine = env.DOCKVM_MACHINE === 'pc' ? 'pc' : 'microvm';
    try {
      const choice = await chooseAccel({
        env,
        qemu,
        image: kernelReport!.boot,
        initramfsHash,
        machine,
        transport,
        onNotice: options.onNotice,
        boot: (plan) =>
          bootVm({ ...plan, qemu: qemu!.path, machine, transport, kernel: kernelReport!.boot.path, initrd: initramfs!.path, agentBinary: agent.path }),
      });
      accel = choice.accel;
      accelReason = choice.reason;
      if (choice.reason === 'probe' || choice.reason === 'cached probe') usable = choice.accel === 'kvm';
      else if (choice.reason === 'no /dev/kvm') usable = false;
    } catch (err) {
      missing.push(problem(err));
    }
  }
  return {
    qemu: qemu ? { path: qemu.path, version: qemu.version } : null,
    kernel: kernelReport,
    initramfs,
    kvm: { device, usable },
    accel,
    accelReason,
    transport,
    cache: { dir, bytes: await du(dir) },
    missing,
    ok: missing.length === 0,
  };
}
