// Start a throwaway build VM and talk to its agent. A VM is restored from a snapshot of a booted, idle
// guest when there is one for its settings (snapshot.ts), and booted otherwise; while the first booted
// VM for a setting does its work, a second, disk-less VM is booted and saved as that snapshot. Either
// way its disks are attached once the guest runs, and the guest is told the time and a fresh random seed
// (the agent's begin). Every start has a deadline; a VM that misses it, or whose QEMU dies, becomes a
// VmError carrying the last lines of the guest console.
// QEMU and the VM's temp dir (sockets) are gone when the VM is shut down, when it fails, and when dockvm
// exits.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { createWriteStream, readFileSync } from 'node:fs';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { type Server, type Socket, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { finished } from 'node:stream/promises';
import { killOnExit, removeOnExit } from '../cleanup.js';
import { type ErrorContext, UsageError, VmError } from '../errors.js';
import { chooseAccel, deviceUsable, hostFacts } from './accel.js';
import { type BootImage, bootImage } from './boot-image.js';
import { ensureAgent } from './agent-binary.js';
import { AgentClient, type ExecOptions, type ExecResult, type RunningCommand } from './agent-client.js';
import { type VmDisk, vmdkDescriptor } from './disks.js';
import { type Initramfs, ensureInitramfs } from './initramfs.js';
import { type GuestKernel, resolveKernel } from './kernel.js';
import { PROTOCOL_VERSION, type Hello } from './protocol.js';
import { Qmp, type QmpEvent } from './qmp.js';
import { type Accel, type AgentChannel, type Machine, type QemuBinary, type QemuConfig, type QemuDisk, blockdevOptions, findQemu, hostTscKhz, machineRow, qemuArgs, scsiDiskDevice } from './qemu.js';
import { type SnapshotDraft, type SnapshotFiles, draftSnapshot, findSnapshot, refuseSnapshot, removeSnapshot, snapshotKey } from './snapshot.js';
import { type Architecture, type ArchitectureRow, ARCHITECTURES, archEnv, defaultArchitecture, hostRow } from './architectures.js';
import { requireGuestPieces } from './guest-platform.js';
import { type NetworkBackend, networkBackend, startPasst } from './network.js';

export type Transport = 'serial' | 'vsock';

export interface VmOptions {
  /** the guest's architecture (default: the host's; the kernel's when `kernel` is given) */
  readonly architecture?: Architecture;
  /** guest RAM (default 512, the spec's buildVMMemorySize default) */
  readonly memoryMiB?: number;
  /** virtual CPUs (default 1: under TCG a second vCPU slows the boot on a small host) */
  readonly cpus?: number;
  /** disks, attached once the guest runs (the guest finds them by name) */
  readonly disks?: readonly VmDisk[];
  /** user-mode networking with DNS, through passt (network.ts; default false: no network) */
  readonly network?: boolean;
  /** boot deadline: the agent must say hello by then (default 10 s under KVM, 30 s under TCG) */
  readonly timeoutMs?: number;
  /** the guest kernel (default: resolveKernel()); booted through PVH when it has the entry point */
  readonly kernel?: GuestKernel;
  /** aborting kills the VM (during boot: startVm rejects) */
  readonly signal?: AbortSignal;
  /** default: DOCKVM_ACCEL, else the cached KVM probe verdict */
  readonly accel?: Accel;
  /** default: DOCKVM_MACHINE (DOCKVM_MACHINE_ARM64…), else the architecture's default (microvm, virt) */
  readonly machine?: Machine;
  /** default: DOCKVM_TRANSPORT, else vsock when /dev/vhost-vsock is usable, else serial */
  readonly transport?: Transport;
  readonly env?: NodeJS.ProcessEnv;
  /** one-line notices (the KVM fallback, a snapshot made or not used); default: stderr */
  readonly onNotice?: (line: string) => void;
  /** restore from a snapshot (made on first use) instead of booting; default: DOCKVM_SNAPSHOTS, else on */
  readonly snapshots?: boolean;
}

/** Everything a boot needs, resolved. */
export interface BootPlan {
  readonly architecture: ArchitectureRow;
  readonly qemu: string;
  readonly accel: Accel;
  readonly machine: Machine;
  readonly transport: Transport;
  readonly memoryMiB: number;
  readonly cpus: number;
  readonly kernel: string;
  readonly initrd: string;
  readonly disks: readonly VmDisk[];
  readonly network: boolean;
  /** with network: passt (default, the host's loopback closed) or QEMU's user networking (DOCKVM_HOST_LOOPBACK=1) */
  readonly networkBackend?: NetworkBackend;
  readonly timeoutMs: number;
  /** the host's own compiled agent, the host side of the vsock bridge (only with vsock) */
  readonly bridgeBinary?: string;
  readonly signal?: AbortSignal;
  /** appended to the kernel command line (DOCKVM_KERNEL_ARGS), for debugging boots */
  readonly extraCmdline?: string;
}

/** How a VM comes to run: booted (and maybe saved as a snapshot before any build touches it), or restored. */
export type VmStart =
  | { readonly kind: 'boot' }
  | { readonly kind: 'save'; readonly memory: string }
  | { readonly kind: 'restore'; readonly snapshot: SnapshotFiles };

const CONSOLE_KEEP = 64 * 1024;
/** A restore that takes longer than this went wrong (a normal one takes well under a second under TCG). */
const RESTORE_TIMEOUT_MS = 15_000;
/** Bytes of seed the guest's RNG is reseeded with at every start */
const SEED_BYTES = 64;
const VSOCK_PORT = 1024;
/** how long a VM gets to power off after the agent acknowledged shutdown before it is killed */
const SHUTDOWN_GRACE_MS = 5000;

/** Is /dev/vhost-vsock there and ours to open? */
export function vsockUsable(): boolean {
  return deviceUsable('/dev/vhost-vsock');
}

export function chooseTransport(env: NodeJS.ProcessEnv = process.env): Transport {
  const forced = env.DOCKVM_TRANSPORT;
  if (forced === 'serial' || forced === 'vsock') return forced;
  if (forced) throw new VmError(`DOCKVM_TRANSPORT=${forced} is not one of serial, vsock`);
  return vsockUsable() ? 'vsock' : 'serial';
}

/** DOCKVM_MACHINE (DOCKVM_MACHINE_ARM64…) when set, else the row's default machine. */
export function chooseMachine(row: ArchitectureRow, env: NodeJS.ProcessEnv = process.env): Machine {
  const variable = archEnv(row, 'DOCKVM_MACHINE');
  const forced = env[variable];
  if (forced === undefined || forced === '') return row.defaultMachine;
  if (Object.hasOwn(row.machines, forced)) return forced;
  throw new VmError(`${variable}=${forced} is not one of ${Object.keys(row.machines).join(', ')}`);
}

/**
 * The host side of the vsock bridge is the agent built for the host (undefined with the serial
 * transport, which needs none; an error when the host's architecture has no row to build it for).
 */
async function bridgeFor(transport: Transport, env: NodeJS.ProcessEnv): Promise<string | undefined> {
  if (transport !== 'vsock') return undefined;
  const host = hostRow();
  if (host === undefined) throw new VmError(`the vsock transport needs dockvm's agent built for this ${process.arch} host, which dockvm has no row for; set DOCKVM_TRANSPORT=serial`);
  return (await ensureAgent(host, env)).path;
}

function chooseSnapshots(env: NodeJS.ProcessEnv): boolean {
  const forced = env.DOCKVM_SNAPSHOTS;
  if (forced === undefined || forced === '' || forced === 'on') return true;
  if (forced === 'off') return false;
  throw new VmError(`DOCKVM_SNAPSHOTS=${forced} is not one of on, off`);
}

/**
 * Start a VM: kernel and initramfs resolved (fetched/built when missing), accel chosen, restored from a
 * snapshot or booted, disks attached, agent ready.
 */
export async function startVm(options: VmOptions = {}): Promise<Vm> {
  const env = options.env ?? process.env;
  const architecture = ARCHITECTURES[options.kernel?.architecture ?? options.architecture ?? defaultArchitecture().architecture];
  // this host's pieces for the architecture first, each a one-line "install X": before anything is fetched
  await requireGuestPieces(architecture, env);
  const qemu = await findQemu(architecture, env);
  const kernel = options.kernel ?? (await resolveKernel({ env, architecture }));
  const transport = options.transport ?? chooseTransport(env);
  const [initramfs, bridge, image] = await Promise.all([
    ensureInitramfs({ kernel, env }),
    bridgeFor(transport, env),
    bootImage(kernel, env),
  ]);
  const machine = options.machine ?? chooseMachine(architecture, env);
  machineRow(architecture, machine); // an unknown machine is refused before anything starts
  const base = { architecture, qemu: qemu.path, machine, transport, kernel: image.path, initrd: initramfs.path, ...(bridge ? { bridgeBinary: bridge } : {}) };
  const accel =
    options.accel ??
    (
      await chooseAccel({
        architecture,
        env,
        qemu,
        image,
        initramfsHash: initramfs.hash,
        machine,
        transport,
        onNotice: options.onNotice,
        boot: (plan) => bootVm({ ...base, ...plan }),
      })
    ).accel;
  const plan: BootPlan = {
    ...base,
    accel,
    memoryMiB: options.memoryMiB ?? 512,
    cpus: options.cpus ?? cpusFromEnv(env) ?? 1,
    disks: options.disks ?? [],
    network: options.network ?? false,
    networkBackend: networkBackend(env),
    timeoutMs: options.timeoutMs ?? bootTimeoutFromEnv(env) ?? (accel === 'kvm' ? 10_000 : 30_000),
    signal: options.signal,
    extraCmdline: env.DOCKVM_KERNEL_ARGS || undefined,
  };
  // The agent's vsock connection does not outlive a restore (the guest's vsock transport is reset), so
  // only the serial channel restores; and only on a machine whose row says it can (architectures.ts).
  if (!(options.snapshots ?? chooseSnapshots(env)) || transport !== 'serial' || !machineRow(architecture, machine).snapshots) return bootVm(plan);
  const notice = options.onNotice ?? ((line: string) => process.stderr.write(`${line}\n`));
  return startFromSnapshot(plan, { qemu, image, initramfs, env, notice });
}

/**
 * DOCKVM_BOOT_TIMEOUT (seconds): a longer boot deadline for hosts where TCG is slow or shared (the test
 * suite sets one, so that a busy CI machine fails on hangs, not on slowness).
 */
function bootTimeoutFromEnv(env: NodeJS.ProcessEnv): number | undefined {
  const value = env.DOCKVM_BOOT_TIMEOUT;
  if (value === undefined || value === '') return undefined;
  const seconds = Number(value);
  if (!Number.isFinite(seconds) || seconds <= 0) throw new VmError(`DOCKVM_BOOT_TIMEOUT=${value} is not a number of seconds`);
  return seconds * 1000;
}

/**
 * DOCKVM_CPUS: virtual CPUs for every VM (default 1), each a host thread under multi-threaded TCG. On an
 * idle 2-core host 2 made the apt-get step of bench:real-run 1.05-1.13x faster (two pairs); on a shared one it cost more CPU and was
 * not faster, and a build reads the count (nproc), so it is a choice, not a guess from the host.
 */
function cpusFromEnv(env: NodeJS.ProcessEnv): number | undefined {
  const value = env.DOCKVM_CPUS;
  if (value === undefined || value === '') return undefined;
  const cpus = Number(value);
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 64) throw new UsageError(`DOCKVM_CPUS=${value} is not a number of virtual CPUs (a whole number from 1 to 64)`);
  return cpus;
}

/** Boot exactly what `plan` says (no resolution, no probing, no snapshot). */
export function bootVm(plan: BootPlan): Promise<Vm> {
  return launchVm(plan, { kind: 'boot' });
}

/** Start a VM as `start` says: booted, booted to be saved, or restored from a snapshot. */
export async function launchVm(plan: BootPlan, start: VmStart): Promise<Vm> {
  plan.signal?.throwIfAborted();
  const tempDir = await mkdtemp(join(tmpdir(), 'dockvm-vm-'));
  const vm = new Vm(plan, tempDir);
  try {
    await vm.start(start);
    return vm;
  } catch (err) {
    await vm.kill();
    throw err;
  }
}

interface SnapshotContext {
  readonly qemu: QemuBinary;
  readonly image: BootImage;
  readonly initramfs: Initramfs;
  readonly env: NodeJS.ProcessEnv;
  readonly notice: (line: string) => void;
}

/** The key of the snapshot `plan` restores from: its QEMU arguments, with per-run paths left out. */
export function planSnapshotKey(plan: BootPlan, context: Pick<SnapshotContext, 'qemu' | 'image' | 'initramfs'>, host = plan.accel === 'kvm' ? hostFacts().cpu : undefined): string {
  const args = qemuArgs(qemuConfig({ ...plan, disks: [] }, [], { transport: 'serial', socketPath: '<agent>' }, '<qmp>', { path: '<memory>', role: 'save' }, usesPasst(plan) ? '<passt>' : undefined));
  return snapshotKey({ qemuVersion: context.qemu.version, args, kernelDigest: context.image.kernelDigest, initramfsHash: context.initramfs.hash, ...(host ? { hostCpu: host } : {}) });
}

/**
 * Restore `plan` from its snapshot. None yet, or one that fails its checks: boot, and once that VM is up
 * (its work going on), save a snapshot in the background from a second, disk-less VM that never saw any
 * of a build (snapshotsSaved() waits for it; so does the process, whose child its QEMU is). Its first
 * check is the next run's restore, which falls back to a boot as below. One that QEMU refuses: boot, and
 * remember not to try again for these settings.
 */
async function startFromSnapshot(plan: BootPlan, context: SnapshotContext): Promise<Vm> {
  const { env, notice } = context;
  const key = planSnapshotKey(plan, context);
  const found = await findSnapshot(key, plan.memoryMiB, env);
  if (found.kind === 'ready') return restoreOrBoot(plan, found.snapshot, key, context, 'the saved VM');
  if (found.kind === 'refused') {
    notice(`dockvm: notice: booting the VM: QEMU refused its snapshot before (${found.reason}); remove ${found.marker} to try again`);
    return bootVm(plan);
  }
  if (found.kind === 'unusable') {
    notice(`dockvm: notice: the VM's snapshot ${found.dir} is not usable (${found.reason}); booting, and saving a new one in the background`);
    await removeSnapshot(found.dir);
  } else {
    notice('dockvm: notice: no snapshot of the VM for these settings yet: booting, and saving one in the background (once), later runs restore it');
  }
  const vm = await bootVm(plan);
  const saving = saveSnapshot(plan, key, context).finally(() => backgroundSaves.delete(saving));
  backgroundSaves.add(saving);
  return vm;
}

/** Snapshots being saved in the background (startFromSnapshot). */
const backgroundSaves = new Set<Promise<void>>();

/** Resolves when every snapshot this process is saving in the background is saved (or given up). */
export async function snapshotsSaved(): Promise<void> {
  await Promise.all([...backgroundSaves]);
}

/**
 * Boot a disk-less VM for `plan`'s settings and save it as the snapshot `key`. Never throws: a snapshot
 * is an optimisation, and the run it started beside has its own VM. QEMU unable to save is remembered
 * (refuseSnapshot) as for a refused restore; anything else (a boot too slow on a busy host) is left for
 * a later run to try again.
 */
async function saveSnapshot(plan: BootPlan, key: string, context: SnapshotContext): Promise<void> {
  let draft: SnapshotDraft | undefined;
  try {
    draft = await draftSnapshot(context.env);
    const template = await launchVm({ ...plan, disks: [] }, { kind: 'save', memory: draft.memory });
    try {
      await template.save(draft.state);
    } catch (err) {
      if (plan.signal?.aborted) return;
      const marker = await refuseSnapshot(key, reason(err), context.env);
      context.notice(`dockvm: notice: QEMU could not save the VM (${reason(err)}); later runs boot (${marker} says so)`);
      return;
    }
    await draft.commit(key, plan.memoryMiB);
  } catch (err) {
    if (!plan.signal?.aborted) context.notice(`dockvm: notice: the VM's snapshot was not saved (${reason(err)}); a later run tries again`);
  } finally {
    await draft?.discard();
  }
}

async function restoreOrBoot(plan: BootPlan, snapshot: SnapshotFiles, key: string, context: SnapshotContext, what: string): Promise<Vm> {
  try {
    return await launchVm({ ...plan, timeoutMs: Math.min(plan.timeoutMs, RESTORE_TIMEOUT_MS) }, { kind: 'restore', snapshot });
  } catch (err) {
    if (plan.signal?.aborted || !(err instanceof RestoreFailed)) throw err;
    if (err.refused) return refuseAndBoot(plan, key, context, `QEMU could not restore ${what}`, err);
    // The guest crashed or did not answer in time: a damaged memory file, or a host too busy. Either way
    // a later run saves a new one.
    await removeSnapshot(snapshot.dir);
    context.notice(`dockvm: notice: the VM restored from its snapshot did not answer (${reason(err)}); booting instead, and the snapshot will be saved again`);
    return bootVm(plan);
  }
}

/** An error's message for a one-line notice: without the console tail. */
function reason(err: unknown): string {
  return err instanceof Error ? err.message.replace(/; guest console.*$/s, '').slice(0, 300) : String(err);
}

/** Remember that snapshots fail for these settings, say so, and boot. */
async function refuseAndBoot(plan: BootPlan, key: string, context: SnapshotContext, what: string, err: unknown): Promise<Vm> {
  const marker = await refuseSnapshot(key, reason(err), context.env);
  context.notice(`dockvm: notice: ${what} (${reason(err)}); booting instead (${marker} says so for later runs)`);
  return bootVm(plan);
}

/** The QemuConfig of a plan, with its disks, agent channel and QMP socket. */
/** With a network, the guest's NIC goes through a passt of its own unless QEMU's user networking was asked for. */
function usesPasst(plan: BootPlan): boolean {
  return plan.network && (plan.networkBackend ?? 'passt') === 'passt';
}

function qemuConfig(plan: BootPlan, disks: readonly QemuDisk[], agent: AgentChannel, qmpSocketPath: string, snapshot?: QemuConfig['snapshot'], networkSocket?: string): QemuConfig {
  return {
    architecture: plan.architecture,
    accel: plan.accel,
    machine: plan.machine,
    memoryMiB: plan.memoryMiB,
    cpus: plan.cpus,
    kernel: plan.kernel,
    initrd: plan.initrd,
    disks,
    network: plan.network,
    agent,
    qmpSocketPath,
    ...(networkSocket !== undefined ? { networkSocket } : {}),
    ...(snapshot ? { snapshot } : {}),
    ...(plan.extraCmdline ? { extraCmdline: plan.extraCmdline } : {}),
    ...(hostTsc() !== undefined ? { hostTscKhz: hostTsc()! } : {}),
  };
}

export class Vm {
  readonly architecture: ArchitectureRow;
  readonly accel: Accel;
  readonly transport: Transport;
  readonly machine: Machine;
  /** the agent's hello, once started */
  hello: Hello | undefined;
  /** milliseconds from spawning QEMU to the agent's being ready (booted or restored, disks attached) */
  bootMs = 0;
  /** restored from a snapshot, rather than booted */
  restored = false;

  private qemu: ChildProcess | undefined;
  private bridge: ChildProcess | undefined;
  private passt: ChildProcess | undefined;
  private server: Server | undefined;
  private qmpServer: Server | undefined;
  private qmp: Qmp | undefined;
  private client: AgentClient | undefined;
  private console: Buffer[] = [];
  private consoleBytes = 0;
  private qemuStderr = '';
  private qemuExited: Promise<void> = Promise.resolve();
  private exitDescription: string | undefined;
  private state: 'booting' | 'running' | 'stopping' | 'stopped' = 'booting';
  private cleaned: Promise<void> | undefined;
  private readonly releaseExitGuards: () => void;

  /** @internal use startVm() or bootVm() */
  constructor(
    private readonly plan: BootPlan,
    readonly tempDir: string,
  ) {
    this.architecture = plan.architecture;
    this.accel = plan.accel;
    this.transport = plan.transport;
    this.machine = plan.machine;
    // if dockvm ends before cleanup() ran: QEMU killed, then its temp dir removed
    const releases = [killOnExit(() => this.livePid()), removeOnExit(tempDir)];
    this.releaseExitGuards = () => releases.forEach((release) => release());
  }

  /** QEMU's process id (for tests and diagnostics); undefined before spawn. */
  get pid(): number | undefined {
    return this.qemu?.pid;
  }

  private livePid(): number | undefined {
    const child = this.qemu;
    if (this.bridge?.pid !== undefined && this.bridge.exitCode === null) this.bridge.kill('SIGKILL');
    if (this.passt?.pid !== undefined && this.passt.exitCode === null) this.passt.kill('SIGKILL');
    return child && child.exitCode === null && child.signalCode === null ? child.pid : undefined;
  }

  /** A unix socket in the VM's temp dir that QEMU connects to; resolves with the first connection. */
  private async listen(name: string): Promise<{ path: string; server: Server; connected: Promise<Socket> }> {
    const path = join(this.tempDir, name);
    const server = createServer();
    const connected = new Promise<Socket>((resolve) =>
      server.once('connection', (socket: Socket) => {
        server.close(); // one VM, one connection
        resolve(socket);
      }),
    );
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => resolve());
    });
    return { path, server, connected };
  }

  /** @internal */
  async start(start: VmStart): Promise<void> {
    const plan = this.plan;
    let channel: AgentChannel;
    let connected: Promise<Duplex>;
    if (plan.transport === 'serial') {
      const agent = await this.listen('agent.sock');
      this.server = agent.server;
      channel = { transport: 'serial', socketPath: agent.path };
      connected = agent.connected;
    } else {
      // a random CID: two VMs at once (also from two dockvm processes) must not share one
      channel = { transport: 'vsock', cid: randomInt(3, 0x7fffffff) };
      connected = Promise.resolve(undefined as unknown as Duplex);
    }
    const control = await this.listen('qmp.sock');
    this.qmpServer = control.server;

    const disks = await Promise.all(
      plan.disks.map(async (disk, i): Promise<QemuDisk> => {
        const name = disk.name ?? `disk${i}`;
        if (disk.parts === undefined) return { path: disk.path, readOnly: disk.readOnly ?? false, name, format: 'raw' };
        const descriptor = join(this.tempDir, `disk${i}.vmdk`);
        await writeFile(descriptor, vmdkDescriptor(disk.parts));
        return { path: descriptor, readOnly: true, name, format: 'vmdk' };
      }),
    );
    let networkSocket: string | undefined;
    if (usesPasst(plan)) {
      const passt = await startPasst(this.tempDir, (chunk) => (this.qemuStderr = (this.qemuStderr + chunk.toString()).slice(-4096)));
      this.passt = passt.process;
      networkSocket = passt.socketPath;
    }
    const snapshot = start.kind === 'save' ? { path: start.memory, role: 'save' as const } : start.kind === 'restore' ? { path: start.snapshot.memory, role: 'restore' as const } : undefined;
    const args = qemuArgs(qemuConfig(plan, disks, channel, control.path, snapshot, networkSocket));
    // a restore reads the saved device state from fd 3 (migrate-incoming fd:3): nothing to spawn, which
    // the sandbox forbids, and QEMU 7.2 has no file: URI
    const state = start.kind === 'restore' ? await open(start.snapshot.state, 'r') : undefined;
    const started = Date.now();
    // node's spawn rather than execa: a long-lived child whose exit is an event, not an outcome
    const qemu = spawn(plan.qemu, args, { stdio: ['ignore', 'pipe', 'pipe', ...(state ? [state.fd] : [])] });
    await state?.close();
    this.qemu = qemu;
    qemu.stdout!.on('data', (chunk: Buffer) => this.keepConsole(chunk));
    qemu.stderr!.on('data', (chunk: Buffer) => (this.qemuStderr = (this.qemuStderr + chunk.toString()).slice(-4096)));
    this.qemuExited = new Promise<void>((resolve) => {
      qemu.once('error', (err) => {
        this.exitDescription = `QEMU could not start: ${err.message}`;
        resolve();
      });
      qemu.once('exit', (code, signal) => {
        this.exitDescription ??= signal ? `QEMU was killed by ${signal}` : `QEMU exited with code ${code}`;
        resolve();
      });
      qemu.once('close', () => resolve());
    });
    void this.qemuExited.then(() => this.onQemuExit());

    if (channel.transport === 'vsock') {
      if (plan.bridgeBinary === undefined) throw new VmError('the vsock transport needs the host agent as its bridge (BootPlan.bridgeBinary)');
      const bridge = spawn(plan.bridgeBinary, ['bridge-vsock', String(channel.cid), String(VSOCK_PORT)], { stdio: ['pipe', 'pipe', 'pipe'] });
      this.bridge = bridge;
      bridge.stderr!.on('data', (chunk: Buffer) => (this.qemuStderr = (this.qemuStderr + chunk.toString()).slice(-4096)));
      connected = Promise.resolve(Duplex.from({ readable: bridge.stdout!, writable: bridge.stdin! }));
    }

    const what = start.kind === 'restore' ? 'restoring' : 'booting';
    // What goes wrong in a restore before the guest answers is the snapshot's fault: QEMU refused it (it
    // exited or the migration failed before the guest ran again), or the guest it gave crashed or never
    // answered (a damaged memory file, or a host too busy); a disk that cannot be attached is the build's.
    let resumed = false;
    const failed = (message: string) => (start.kind === 'restore' ? new RestoreFailed(message, !resumed) : new VmError(message));
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(failed(`the VM did not reach its agent within ${plan.timeoutMs} ms (${what}, ${plan.architecture.architecture}, ${plan.accel}, ${plan.machine})${this.consoleSuffix()}`)),
        plan.timeoutMs,
      );
    });
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => reject(new VmError(`the VM ${start.kind === 'restore' ? 'restore' : 'boot'} was aborted`, { cause: plan.signal?.reason }));
      plan.signal?.addEventListener('abort', onAbort, { once: true });
    });
    const died = this.qemuExited.then(async () => {
      throw failed(`the VM stopped while ${what}: ${this.describeExit()}`);
    });
    const agentClient = async (): Promise<AgentClient> => {
      this.client = new AgentClient(await connected, () => void this.onLinkLost());
      return this.client;
    };
    const ready = async (): Promise<Hello> => {
      this.qmp = new Qmp(await control.connected);
      await this.qmp.ready();
      if (start.kind === 'restore') {
        try {
          await this.qmp.execute('migrate-set-capabilities', { capabilities: MIGRATION_CAPABILITIES });
          await this.qmp.execute('migrate-incoming', { uri: 'fd:3' });
          await migrationDone(this.qmp, 'loading the snapshot');
        } catch (err) {
          throw new RestoreFailed(err instanceof Error ? err.message : String(err), true, { cause: err });
        }
        const client = await agentClient();
        await this.attachDisks(disks); // while the guest is paused: it sees them as it resumes
        await this.qmp.execute('cont');
        resumed = true;
        return this.begin(client, disks);
      }
      const client = await agentClient();
      const hello = await client.hello();
      // a guest about to be saved gets nothing of a build: no disks, no clock, no seed
      if (start.kind === 'save') return hello;
      await this.attachDisks(disks);
      return this.begin(client, disks);
    };
    try {
      const hello = await Promise.race([
        ready().catch(async (err: unknown) => {
          // a channel that closed because QEMU exited: say that QEMU exited (and why), not that a channel closed
          if (await Promise.race([this.qemuExited.then(() => true), sleep(1000).then(() => false)])) throw failed(`the VM stopped while ${what}: ${this.describeExit()}`);
          throw err;
        }),
        deadline,
        aborted,
        died,
      ]);
      if (hello.protocol !== PROTOCOL_VERSION) {
        throw new VmError(`the guest agent speaks protocol ${hello.protocol}, this dockvm speaks ${PROTOCOL_VERSION}; remove the initramfs cache to rebuild it`);
      }
      this.hello = hello;
      this.bootMs = Date.now() - started;
      this.restored = start.kind === 'restore';
      this.state = 'running';
      if (plan.signal) plan.signal.addEventListener('abort', () => void this.kill(), { once: true });
    } finally {
      clearTimeout(timer);
      if (onAbort) plan.signal?.removeEventListener('abort', onAbort);
      died.catch(() => {});
    }
  }

  /** Hot-add the disks: each file opened, then a SCSI LUN (qemu.ts). */
  private async attachDisks(disks: readonly QemuDisk[]): Promise<void> {
    for (const [i, disk] of disks.entries()) {
      await this.qmp!.execute('blockdev-add', blockdevOptions(disk, i));
      await this.qmp!.execute('device_add', scsiDiskDevice(disk, i));
    }
  }

  /** The guest's clock set, its RNG reseeded, and the disks seen (agent begin). */
  private begin(client: AgentClient, disks: readonly QemuDisk[]): Promise<Hello> {
    return client.begin({ clockMs: Date.now(), seed: randomBytes(SEED_BYTES), disks: disks.map((disk) => disk.name) });
  }

  /**
   * Save this VM, idle, as a snapshot: stop it and write its device state to `statePath` (its RAM is
   * already in the memory file it was started with); then kill it. Only for a VM started with `save`.
   */
  async save(statePath: string): Promise<void> {
    const qmp = this.qmp;
    if (this.state !== 'running' || !qmp) throw new VmError(`cannot save the VM: it is ${this.state}`);
    const stream = await this.listen('migrate.sock');
    const written = stream.connected.then(async (socket) => {
      const file = createWriteStream(statePath);
      socket.pipe(file);
      await finished(file);
    });
    written.catch(() => {}); // awaited below, after the migration's own verdict
    try {
      await qmp.execute('stop');
      await qmp.execute('migrate-set-capabilities', { capabilities: MIGRATION_CAPABILITIES });
      await qmp.execute('migrate', { uri: `unix:${stream.path}` });
      await Promise.race([migrationDone(qmp, 'saving the VM'), this.qemuExited.then(() => Promise.reject(new VmError(`the VM stopped while being saved: ${this.describeExit()}`)))]);
      await written;
    } finally {
      stream.server.close();
      await this.kill();
    }
  }

  private keepConsole(chunk: Buffer): void {
    this.console.push(chunk);
    this.consoleBytes += chunk.length;
    while (this.consoleBytes - this.console[0]!.length > CONSOLE_KEEP && this.console.length > 1) {
      this.consoleBytes -= this.console.shift()!.length;
    }
  }

  /** The last `lines` lines the guest printed on its console (kernel messages, init's errors). */
  consoleTail(lines = 20): string[] {
    // eslint-disable-next-line no-control-regex
    const text = Buffer.concat(this.console).toString('utf8').replace(/\r/g, '').replace(/\x1b\[[0-9;?]*[a-zA-Z]/g, '');
    return text.split('\n').filter((line) => line.trim() !== '').slice(-lines);
  }

  private consoleSuffix(): string {
    const tail = this.consoleTail(8);
    // a panic's register dump pushes its cause out of the tail: name it first
    const panic = this.consoleTail(200).find((line) => /Kernel panic|Out of memory/.test(line));
    if (panic && !tail.includes(panic)) tail.unshift(panic, '…');
    const stderr = this.qemuStderr.trim().split('\n').filter(Boolean).slice(-3);
    const parts: string[] = [];
    if (stderr.length) parts.push(`; QEMU said: ${stderr.join(' | ')}`);
    parts.push(tail.length ? `; guest console ended with: ${tail.join(' | ')}` : '; the guest console is empty');
    return parts.join('');
  }

  private describeExit(): string {
    return `${this.exitDescription ?? 'QEMU exited'}${this.consoleSuffix()}`;
  }

  private async onLinkLost(): Promise<void> {
    if (this.state === 'stopping' || this.state === 'stopped') return;
    // the channel drops a moment before QEMU's exit is reported: give the better message a chance
    await Promise.race([this.qemuExited, new Promise((r) => setTimeout(r, 1000))]);
    this.client?.close(new VmError(`the VM's agent went away: ${this.describeExit()}`));
    await this.kill();
  }

  private onQemuExit(): void {
    if (this.state === 'stopping' || this.state === 'stopped') return;
    this.client?.close(new VmError(`the VM stopped unexpectedly: ${this.describeExit()}`));
    void this.cleanup();
  }

  private agent(): AgentClient {
    if (this.state !== 'running' || !this.client || this.client.closed) {
      throw new VmError(`the VM is ${this.state === 'running' ? 'gone' : this.state}: ${this.exitDescription ?? 'no agent'}`);
    }
    return this.client;
  }

  /** Run a command; resolves with its exit status (a non-zero exit is not an error here). */
  exec(options: ExecOptions): Promise<ExecResult> {
    try {
      return this.agent().exec(options);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Run a command you can signal or resize while it runs. */
  spawn(options: ExecOptions): RunningCommand {
    return this.agent().spawn(options);
  }

  getFile(path: string): Promise<Buffer> {
    try {
      return this.agent().getFile(path);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  putFile(path: string, data: Buffer | string, mode = 0o644): Promise<void> {
    try {
      return this.agent().putFile(path, data, mode);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Sync and power off; kills QEMU if it does not stop in time. Idempotent. */
  async shutdown(): Promise<void> {
    if (this.state === 'stopping' || this.state === 'stopped') return this.cleaned;
    const client = this.state === 'running' ? this.client : undefined;
    this.state = 'stopping';
    if (client && !client.closed) {
      const acknowledged = client.shutdown().catch(() => {});
      await Promise.race([acknowledged, this.qemuExited, sleep(SHUTDOWN_GRACE_MS)]);
      await Promise.race([this.qemuExited, sleep(SHUTDOWN_GRACE_MS)]);
      client.close(new VmError('the VM was shut down'));
    }
    return this.kill();
  }

  /** Kill QEMU now and remove the temp dir. Idempotent. */
  async kill(): Promise<void> {
    if (this.state !== 'stopped') this.state = 'stopping';
    this.client?.close(new VmError(`the VM was stopped${this.exitDescription ? `: ${this.exitDescription}` : ''}`));
    return this.cleanup();
  }

  private cleanup(): Promise<void> {
    this.cleaned ??= (async () => {
      this.server?.close();
      this.qmpServer?.close();
      this.qmp?.close(new VmError('the VM was stopped'));
      this.bridge?.kill('SIGKILL');
      this.passt?.kill('SIGKILL');
      const qemu = this.qemu;
      if (qemu && qemu.exitCode === null && qemu.signalCode === null) qemu.kill('SIGKILL');
      await Promise.race([this.qemuExited, sleep(2000)]);
      await rm(this.tempDir, { recursive: true, force: true });
      this.state = 'stopped';
      this.releaseExitGuards();
    })();
    return this.cleaned;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.shutdown();
  }
}

/** A restore that failed because of the snapshot: QEMU refused it, or the guest it gave does not answer. */
class RestoreFailed extends VmError {
  constructor(
    message: string,
    /** QEMU refused the snapshot (rather than the guest it gave crashing or not answering in time) */
    readonly refused: boolean,
    context?: ErrorContext,
  ) {
    super(message, context);
  }
}

/**
 * x-ignore-shared: RAM in a shared memory backend is not copied into the stream (the file is the
 * snapshot's memory). events: MIGRATION events say when it is done.
 */
const MIGRATION_CAPABILITIES = [
  { capability: 'x-ignore-shared', state: true },
  { capability: 'events', state: true },
];

async function migrationDone(qmp: Qmp, what: string): Promise<void> {
  const ended = (event: QmpEvent) => event.event === 'MIGRATION' && ['completed', 'failed', 'cancelled'].includes(String(event.data?.status));
  const event = await qmp.waitEvent(ended);
  if (event.data?.status !== 'completed') {
    const info = (await qmp.execute('query-migrate').catch(() => undefined)) as { 'error-desc'?: string } | undefined;
    throw new VmError(`${what} failed in QEMU: ${info?.['error-desc'] ?? String(event.data?.status)}`);
  }
}

let tscKhz: number | undefined | null = null;
function hostTsc(): number | undefined {
  if (tscKhz === null) {
    try {
      tscKhz = hostTscKhz(readFileSync('/proc/cpuinfo', 'utf8'));
    } catch {
      tscKhz = undefined;
    }
  }
  return tscKhz;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
