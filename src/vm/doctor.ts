// What this host has for running build VMs: QEMU, the guest kernel and modules, the initramfs, KVM (probed
// with a real boot, not guessed from /dev/kvm), the agent transport, and the cache, for the host's own
// architecture; and for every architecture dockvm has a row for, whether it can build for it here. Each
// missing piece comes with what to install.
import { existsSync } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { DockvmError } from '../errors.js';
import { chooseAccel, kvmDevicePresent } from './accel.js';
import { ensureAgent, findAgentCompiler } from './agent-binary.js';
import { ARCHITECTURES, type Architecture, type ArchitectureRow, defaultArchitecture } from './architectures.js';
import { type BootImage, bootImage } from './boot-image.js';
import { findBusybox } from './guest-tools.js';
import { ensureInitramfs, planInitramfs } from './initramfs.js';
import { type GuestKernel, resolveKernel } from './kernel.js';
import { planModules } from './modules.js';
import { cacheDir } from '../cache-dir.js';
import { assetPath, findOnPath } from './paths.js';
import { type Accel, type QemuBinary, findQemu, machineRow } from './qemu.js';
import { bootVm, chooseMachine, chooseTransport, type Transport } from './vm.js';
import { PASST_MISSING, networkBackend, type NetworkBackend } from './network.js';

/** Whether this host can build for one architecture. */
export interface ArchitectureReport {
  readonly architecture: Architecture;
  /** "linux/arm64/v8" */
  readonly platform: string;
  readonly qemu: { path: string; version: string } | null;
  /** tcg for a guest of another architecture; for the host's own, the accel of the main report */
  readonly accel: Accel | null;
  /** the guest kernel's release when it is in the cache (else it is fetched on first use) */
  readonly kernel: string | null;
  /** what is missing, each with what to install; empty: it can build */
  readonly missing: string[];
  readonly ready: boolean;
}

export interface DoctorReport {
  /** the architecture the rest of the report is about: the host's own */
  architecture: Architecture;
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
  /**
   * A build's network (RUN steps by default, `network: true`): passt (the host's loopback closed) or,
   * with DOCKVM_HOST_LOOPBACK=1, QEMU's user networking. `problem` says what to install; builds without
   * network do not need it, so it is not one of `missing`.
   */
  network: { backend: NetworkBackend; passt: string | null; problem: string | null };
  cache: { dir: string; bytes: number };
  /** one line per problem, each saying what to do */
  missing: string[];
  ok: boolean;
  /** every architecture dockvm has a row for: which this host can build for */
  architectures: ArchitectureReport[];
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

/** What a build's network would run on, and what to install for it. */
export function networkReport(env: NodeJS.ProcessEnv): DoctorReport['network'] {
  let backend: NetworkBackend;
  try {
    backend = networkBackend(env);
  } catch (err) {
    return { backend: 'passt', passt: findOnPath('passt', env) ?? null, problem: problem(err) };
  }
  const passt = findOnPath('passt', env) ?? null;
  return { backend, passt, problem: backend === 'passt' && passt === null ? PASST_MISSING : null };
}

function problem(err: unknown): string {
  return err instanceof DockvmError ? err.message : `unexpected: ${String(err)}`;
}

export interface DoctorOptions {
  env?: NodeJS.ProcessEnv;
  /** notices from the KVM probe (default: stderr) */
  onNotice?: (line: string) => void;
}

/** The QEMU of `row`, and its machine's firmware; what is missing goes to `missing`. */
async function qemuOf(row: ArchitectureRow, env: NodeJS.ProcessEnv, missing: string[]): Promise<QemuBinary | undefined> {
  try {
    const qemu = await findQemu(row, env);
    const machine = chooseMachine(row, env);
    const { firmware } = machineRow(row, machine);
    if (firmware.length > 0 && !firmware.some((file) => existsSync(file))) {
      const others = Object.keys(row.machines).filter((name) => name !== machine);
      missing.push(`QEMU lacks the ${machine} firmware (${firmware[0]}): install ${row.qemu.package} from Debian${others.length ? `, or set DOCKVM_MACHINE=${others[0]}` : ''}`);
    }
    return qemu;
  } catch (err) {
    missing.push(problem(err));
    return undefined;
  }
}

/** Can this host build for `row`, another architecture than the main report's: QEMU, the agent's compiler, the kernel if fetched. */
async function architectureReport(row: ArchitectureRow, env: NodeJS.ProcessEnv): Promise<ArchitectureReport> {
  const missing: string[] = [];
  const qemu = await qemuOf(row, env, missing);
  try {
    await findAgentCompiler(row, env);
  } catch (err) {
    missing.push(problem(err));
  }
  const kernel = await resolveKernel({ env, architecture: row, fetch: false }).then(
    (found) => found.release,
    () => null,
  );
  const ready = missing.length === 0;
  return { architecture: row.architecture, platform: platformName(row), qemu: qemu ?? null, accel: ready ? 'tcg' : null, kernel, missing, ready };
}

function platformName(row: ArchitectureRow): string {
  return ['linux', row.architecture, row.variant].filter(Boolean).join('/');
}

export async function doctor(options: DoctorOptions = {}): Promise<DoctorReport> {
  const env = options.env ?? process.env;
  const missing: string[] = [];
  const dir = cacheDir(env);
  const row = defaultArchitecture();

  const qemu = await qemuOf(row, env, missing);

  let kernel: GuestKernel | undefined;
  let kernelReport: DoctorReport['kernel'] = null;
  try {
    kernel = await resolveKernel({ env, architecture: row, fetch: false });
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
    await findBusybox(row, env);
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
        await ensureAgent(row, env);
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
    try {
      const machine = chooseMachine(row, env);
      const bridge = transport === 'vsock' ? (await ensureAgent(row, env)).path : undefined;
      const choice = await chooseAccel({
        architecture: row,
        env,
        qemu,
        image: kernelReport!.boot,
        initramfsHash,
        machine,
        transport,
        onNotice: options.onNotice,
        boot: (plan) =>
          bootVm({
            ...plan,
            architecture: row,
            qemu: qemu!.path,
            machine,
            transport,
            kernel: kernelReport!.boot.path,
            initrd: initramfs!.path,
            ...(bridge ? { bridgeBinary: bridge } : {}),
          }),
      });
      accel = choice.accel;
      accelReason = choice.reason;
      if (choice.reason === 'probe' || choice.reason === 'cached probe') usable = choice.accel === 'kvm';
      else if (choice.reason === 'no /dev/kvm') usable = false;
    } catch (err) {
      missing.push(problem(err));
    }
  }
  const others = await Promise.all(Object.values(ARCHITECTURES).filter((other) => other !== row).map((other) => architectureReport(other, env)));
  const own: ArchitectureReport = {
    architecture: row.architecture,
    platform: platformName(row),
    qemu: qemu ? { path: qemu.path, version: qemu.version } : null,
    accel,
    kernel: kernel?.release ?? null,
    missing,
    ready: missing.length === 0,
  };
  return {
    architecture: row.architecture,
    qemu: qemu ? { path: qemu.path, version: qemu.version } : null,
    kernel: kernelReport,
    initramfs,
    kvm: { device, usable },
    accel,
    accelReason,
    transport,
    network: networkReport(env),
    cache: { dir, bytes: await du(dir) },
    missing,
    ok: missing.length === 0,
    architectures: [own, ...others].sort((a, b) => (a.architecture < b.architecture ? -1 : 1)),
  };
}
