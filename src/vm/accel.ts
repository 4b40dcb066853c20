// KVM or TCG. /dev/kvm existing is not proof that KVM works: some hosts expose a KVM under which a
// standard kernel hangs silently. So KVM counts as usable only after a real short boot reached the
// agent; the verdict is cached per host, kernel and QEMU version. DOCKVM_ACCEL=kvm|tcg overrides.
import { accessSync, constants as fsConstants } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { hostname, release } from 'node:os';
import { dirname, join } from 'node:path';
import { VmError } from '../errors.js';
import type { GuestKernel } from './kernel.js';
import { cacheDir } from '../cache-dir.js';
import type { Accel, QemuBinary } from './qemu.js';
import { writeAtomically } from '../output.js';

/** How long a KVM boot may take to reach the agent; a working KVM needs well under a second. */
export const KVM_PROBE_TIMEOUT_MS = 4000;

export interface AccelChoice {
  readonly accel: Accel;
  /** why: "DOCKVM_ACCEL", "no /dev/kvm", "probe" (just now) or "cached probe" */
  readonly reason: string;
}

export interface ChooseAccelOptions {
  readonly env?: NodeJS.ProcessEnv;
  readonly qemu: QemuBinary;
  readonly kernel: GuestKernel;
  /** part of the cache key: a different initramfs may boot differently */
  readonly initramfsHash: string;
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

export function accelCacheKey(options: Pick<ChooseAccelOptions, 'qemu' | 'kernel' | 'initramfsHash'>): string {
  return [hostname(), release(), `qemu ${options.qemu.version}`, options.kernel.kernel, options.kernel.release, options.initramfsHash.slice(0, 16)].join(' / ');
}

/** The cached verdict for this host, kernel and QEMU, if a probe ran before. */
export async function cachedAccel(options: Pick<ChooseAccelOptions, 'qemu' | 'kernel' | 'initramfsHash' | 'env' | 'cacheFile'>): Promise<Accel | undefined> {
  const file = options.cacheFile ?? join(cacheDir(options.env), 'accel.json');
  return (await readVerdicts(file))[accelCacheKey(options)]?.accel;
}

export async function chooseAccel(options: ChooseAccelOptions): Promise<AccelChoice> {
  const env = options.env ?? process.env;
  const forced = env.DOCKVM_ACCEL;
  if (forced === 'kvm' || forced === 'tcg') return { accel: forced, reason: 'DOCKVM_ACCEL' };
  if (forced) throw new VmError(`DOCKVM_ACCEL=${forced} is not one of kvm, tcg`);
  if (!kvmDevicePresent()) return { accel: 'tcg', reason: 'no /dev/kvm' };

  const file = options.cacheFile ?? join(cacheDir(env), 'accel.json');
  const key = accelCacheKey(options);
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
