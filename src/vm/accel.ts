// KVM or TCG. /dev/kvm existing is not proof that KVM works: some hosts expose a KVM under which a
// standard kernel hangs silently. So KVM counts as usable only after a real short boot reached the
// agent; the verdict is cached under a key of everything it depends on (accelCacheKey), so that a new
// host kernel, CPU, KVM module, QEMU, guest kernel, initramfs or machine probes again. DOCKVM_ACCEL=kvm|tcg
// overrides. A guest of another architecture than the host's (architectures.ts) is always TCG: KVM runs
// the host's own instruction set only.
import { accessSync, readdirSync, readFileSync, constants as fsConstants } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { arch, release, version } from 'node:os';
import { dirname, join } from 'node:path';
import { VmError } from '../errors.js';
import type { BootImage } from './boot-image.js';
import { cacheDir } from '../cache-dir.js';
import type { Accel, AgentChannel, Machine, QemuBinary } from './qemu.js';
import { type ArchitectureRow, isNative } from './architectures.js';
import { hostArchitecture } from '../image/platform.js';
import { writeAtomically } from '../output.js';

/** How long a KVM boot may take to reach the agent; a working KVM needs well under a second. */
export const KVM_PROBE_TIMEOUT_MS = 4000;

export interface AccelChoice {
  readonly accel: Accel;
  /** why: "DOCKVM_ACCEL", "no /dev/kvm", "probe" (just now), "cached probe", or "arm64 guest on this amd64 host" */
  readonly reason: string;
}

/** What the probe boots, all of it part of the verdict's key. */
export interface AccelProbeInputs {
  /** its path and version: another QEMU may drive KVM differently */
  readonly qemu: QemuBinary;
  /** the kernel it boots (by content) and how (PVH or bzImage entry) */
  readonly image: BootImage;
  /** a different initramfs may boot differently */
  readonly initramfsHash: string;
  /** microvm and pc set up different devices and firmware */
  readonly machine: Machine;
  /** the probe's criterion is reaching the agent, over this channel */
  readonly transport: AgentChannel['transport'];
}

export interface ChooseAccelOptions extends AccelProbeInputs {
  /** the guest's architecture: KVM only when it is the host's */
  readonly architecture: ArchitectureRow;
  readonly env?: NodeJS.ProcessEnv;
  /** the host the verdict is for (default: hostFacts(), this one) */
  readonly host?: HostFacts;
  /** boots a VM with these settings (vm.ts provides it; injected to keep this module free of QEMU) */
  readonly boot: (plan: {
    accel: Accel;
    timeoutMs: number;
    memoryMiB: number;
    cpus: number;
    disks: [];
    network: false;
  }) => Promise<{ shutdown(): Promise<void> }>;
  readonly probeTimeoutMs?: number;
  /** where verdicts are kept (default: accel.json in the cache dir) */
  readonly cacheFile?: string;
  readonly onNotice?: (line: string) => void;
}

export function kvmDevicePresent(): boolean {
  return deviceUsable('/dev/kvm');
}

/** Is the device there and ours to open for reading and writing (/dev/kvm, /dev/vhost-vsock)? */
export function deviceUsable(path: string): boolean {
  try {
    accessSync(path, fsConstants.R_OK | fsConstants.W_OK);
    return true;
  } catch {
    return false;
  }
}

type Verdicts = Record<string, { accel: Accel; probedAt: string; detail?: string }>;

async function readVerdicts(file: string): Promise<Verdicts> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as Verdicts;
  } catch {
    return {};
  }
}

/**
 * What a KVM verdict depends on, on the host's side. Not the host's name: it says nothing KVM depends on
 * that these do not, and it changes with every container of a CI job that keeps its cache.
 */
export interface HostFacts {
  /** the host kernel, which is KVM: its architecture, release and build */
  readonly kernel: string;
  /** the CPU (vendor, family, model, stepping, microcode) and its virtualisation flags (vmx, svm; hypervisor: we are nested) */
  readonly cpu: string;
  /** which KVM /dev/kvm is: the kvm modules loaded (kvm_intel, kvm_amd, kvm_pvm…) and their versions when they say */
  readonly kvm: string;
}

const CPU_FIELDS = ['vendor_id', 'cpu family', 'model', 'model name', 'stepping', 'microcode', 'CPU implementer', 'CPU architecture', 'CPU variant', 'CPU part', 'CPU revision'];
const KVM_FLAGS = new Set(['vmx', 'svm', 'hypervisor']);

/** This host's HostFacts, read from os, /proc/cpuinfo and /sys/module. */
export function hostFacts(): HostFacts {
  const cpuinfo = readOr('/proc/cpuinfo').split(/\n\s*\n/)[0]!; // the first CPU stands for all
  const field = (name: string) => new RegExp(`^${name}\\s*:\\s*(.*)$`, 'm').exec(cpuinfo)?.[1]?.trim();
  const fields = CPU_FIELDS.flatMap((name) => (field(name) === undefined ? [] : [`${name}=${field(name)}`]));
  const flags = (field('flags') ?? '').split(/\s+/).filter((flag) => KVM_FLAGS.has(flag));
  const vmxFlags = field('vmx flags'); // VT-x features (ept, unrestricted_guest…), on kernels that list them
  let modules: string[] = [];
  try {
    modules = readdirSync('/sys/module').filter((name) => name === 'kvm' || name.startsWith('kvm_')).sort();
  } catch {
    // no sysfs: nothing to tell modules apart by
  }
  const kvm = modules.map((name) => [name, readOr(`/sys/module/${name}/version`), readOr(`/sys/module/${name}/srcversion`)].filter(Boolean).join(' '));
  return {
    kernel: `${arch()} ${release()} ${version()}`,
    cpu: [...fields, `flags=${flags.join(',')}`, ...(vmxFlags === undefined ? [] : [`vmx flags=${vmxFlags}`])].join('; '),
    kvm: kvm.join(', ') || 'no kvm module',
  };
}

function readOr(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return '';
  }
}

/** The verdicts file's key: every input the probe's outcome depends on (HostFacts, AccelProbeInputs). */
export function accelCacheKey(inputs: AccelProbeInputs, host: HostFacts = hostFacts()): string {
  return [
    host.kernel,
    host.cpu,
    host.kvm,
    `qemu ${inputs.qemu.path} ${inputs.qemu.version}`,
    `${inputs.machine} ${inputs.transport}`,
    `kernel ${inputs.image.protocol} ${inputs.image.kernelDigest.slice(0, 16)}`,
    `initramfs ${inputs.initramfsHash.slice(0, 16)}`,
  ].join(' / ');
}

/** The cached verdict for this host and these probe inputs, if a probe ran before. */
export async function cachedAccel(options: AccelProbeInputs & Pick<ChooseAccelOptions, 'env' | 'cacheFile' | 'host'>): Promise<Accel | undefined> {
  const file = options.cacheFile ?? join(cacheDir(options.env), 'accel.json');
  return (await readVerdicts(file))[accelCacheKey(options, options.host)]?.accel;
}

export async function chooseAccel(options: ChooseAccelOptions): Promise<AccelChoice> {
  const env = options.env ?? process.env;
  if (!isNative(options.architecture)) return { accel: 'tcg', reason: `${options.architecture.architecture} guest on this ${hostArchitecture()} host` };
  const forced = env.DOCKVM_ACCEL;
  if (forced === 'kvm' || forced === 'tcg') return { accel: forced, reason: 'DOCKVM_ACCEL' };
  if (forced) throw new VmError(`DOCKVM_ACCEL=${forced} is not one of kvm, tcg`);
  if (!kvmDevicePresent()) return { accel: 'tcg', reason: 'no /dev/kvm' };

  const file = options.cacheFile ?? join(cacheDir(env), 'accel.json');
  const key = accelCacheKey(options, options.host);
  const known = (await readVerdicts(file))[key];
  if (known) return { accel: known.accel, reason: 'cached probe' };

  const timeoutMs = options.probeTimeoutMs ?? (Number(env.DOCKVM_KVM_PROBE_TIMEOUT_MS) || KVM_PROBE_TIMEOUT_MS);
  let accel: Accel = 'tcg';
  let detail: string | undefined;
  try {
    const vm = await options.boot({ accel: 'kvm', timeoutMs, memoryMiB: 256, cpus: 1, disks: [], network: false });
    accel = 'kvm';
    await vm.shutdown();
  } catch (err) {
    detail = err instanceof Error ? err.message.slice(0, 300) : String(err);
  }
  if (accel === 'tcg') {
    const why = (detail ?? '').replace(/; guest console.*$/, '').slice(0, 160);
    (options.onNotice ?? ((line: string) => process.stderr.write(`${line}\n`)))(
      `dockvm: /dev/kvm is present but a KVM test boot failed (${why}); using TCG, which is slower. DOCKVM_ACCEL=tcg skips this probe.`,
    );
  }
  // re-read before writing: another dockvm may have probed meanwhile; last writer wins per key
  const verdicts = await readVerdicts(file);
  verdicts[key] = { accel, probedAt: new Date().toISOString(), ...(detail ? { detail } : {}) };
  await mkdir(dirname(file), { recursive: true });
  await writeAtomically(file, (temp) => writeFile(temp, `${JSON.stringify(verdicts, null, 2)}\n`));
  return { accel, reason: 'probe' };
}
