// Boot a throwaway build VM and talk to its agent. Every boot has a deadline; a VM that misses it, or
// whose QEMU dies, becomes a VmError carrying the last lines of the guest console. QEMU and the VM's
// temp dir (agent socket) are gone when the VM is shut down, when it fails, and when dockvm exits.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { type Server, type Socket, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { killOnExit, removeOnExit } from '../cleanup.js';
import { VmError } from '../errors.js';
import { chooseAccel, deviceUsable } from './accel.js';
import { bootImage } from './boot-image.js';
import { ensureAgent } from './agent-binary.js';
import { AgentClient, type ExecOptions, type ExecResult, type RunningCommand } from './agent-client.js';
import { type VmDisk, vmdkDescriptor } from './disks.js';
import { ensureInitramfs } from './initramfs.js';
import { type GuestKernel, resolveKernel } from './kernel.js';
import { PROTOCOL_VERSION, type Hello } from './protocol.js';
import { type Accel, type AgentChannel, type Machine, findQemu, hostTscKhz, machineRow, qemuArgs } from './qemu.js';
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
  /** virtio-blk disks (the guest finds them by serial) */
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
  /** one-line notices (the KVM fallback); default: stderr */
  readonly onNotice?: (line: string) => void;
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

const CONSOLE_KEEP = 64 * 1024;
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

/** Boot a VM: kernel and initramfs resolved (fetched/built when missing), accel chosen, agent ready. */
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
  return bootVm({
    ...base,
    accel,
    memoryMiB: options.memoryMiB ?? 512,
    cpus: options.cpus ?? 1,
    disks: options.disks ?? [],
    network: options.network ?? false,
    networkBackend: networkBackend(env),
    timeoutMs: options.timeoutMs ?? bootTimeoutFromEnv(env) ?? (accel === 'kvm' ? 10_000 : 30_000),
    signal: options.signal,
    extraCmdline: env.DOCKVM_KERNEL_ARGS || undefined,
  });
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

/** Boot exactly what `plan` says (no resolution, no probing). */
export async function bootVm(plan: BootPlan): Promise<Vm> {
  plan.signal?.throwIfAborted();
  const tempDir = await mkdtemp(join(tmpdir(), 'dockvm-vm-'));
  const vm = new Vm(plan, tempDir);
  try {
    await vm.boot();
    return vm;
  } catch (err) {
    await vm.kill();
    throw err;
  }
}

export class Vm {
  readonly architecture: ArchitectureRow;
  readonly accel: Accel;
  readonly transport: Transport;
  readonly machine: Machine;
  /** the agent's hello, once booted */
  hello: Hello | undefined;
  /** milliseconds from spawning QEMU to the agent's hello */
  bootMs = 0;

  private qemu: ChildProcess | undefined;
  private bridge: ChildProcess | undefined;
  private passt: ChildProcess | undefined;
  private server: Server | undefined;
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

  /** @internal */
  async boot(): Promise<void> {
    const plan = this.plan;
    let channel: AgentChannel;
    let connected: Promise<Duplex>;
    if (plan.transport === 'serial') {
      const socketPath = join(this.tempDir, 'agent.sock');
      channel = { transport: 'serial', socketPath };
      const server = createServer();
      this.server = server;
      connected = new Promise<Duplex>((resolve) => server.once('connection', (socket: Socket) => {
        server.close(); // one VM, one connection
        resolve(socket);
      }));
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(socketPath, () => resolve());
      });
    } else {
      // a random CID: two VMs at once (also from two dockvm processes) must not share one
      channel = { transport: 'vsock', cid: randomInt(3, 0x7fffffff) };
      connected = Promise.resolve(undefined as unknown as Duplex);
    }

    const disks = await Promise.all(
      plan.disks.map(async (disk, i) => {
        const serial = (disk.name ?? `disk${i}`).slice(0, 20);
        if (disk.parts === undefined) return { path: disk.path, readOnly: disk.readOnly ?? false, serial, format: 'raw' as const };
        const descriptor = join(this.tempDir, `disk${i}.vmdk`);
        await writeFile(descriptor, vmdkDescriptor(disk.parts));
        return { path: descriptor, readOnly: true, serial, format: 'vmdk' as const };
      }),
    );
    let networkSocket: string | undefined;
    if (plan.network && (plan.networkBackend ?? 'passt') === 'passt') {
      const passt = await startPasst(this.tempDir, (chunk) => (this.qemuStderr = (this.qemuStderr + chunk.toString()).slice(-4096)));
      this.passt = passt.process;
      networkSocket = passt.socketPath;
    }
    const args = qemuArgs({ ...plan, disks, agent: channel, networkSocket, hostTscKhz: hostTsc(), extraCmdline: plan.extraCmdline });
    const started = Date.now();
    // node's spawn rather than execa: a long-lived child whose exit is an event, not an outcome
    const qemu = spawn(plan.qemu, args, { stdio: ['ignore', 'pipe', 'pipe'] });
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

    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new VmError(`the VM did not reach its agent within ${plan.timeoutMs} ms (${plan.architecture.architecture}, ${plan.accel}, ${plan.machine})${this.consoleSuffix()}`)),
        plan.timeoutMs,
      );
    });
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => reject(new VmError('the VM boot was aborted', { cause: plan.signal?.reason }));
      plan.signal?.addEventListener('abort', onAbort, { once: true });
    });
    const died = this.qemuExited.then(async () => {
      throw new VmError(`the VM stopped while booting: ${this.describeExit()}`);
    });
    try {
      const hello = await Promise.race([
        connected.then((link) => {
          this.client = new AgentClient(link, () => void this.onLinkLost());
          return this.client.hello();
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
      this.state = 'running';
      if (plan.signal) plan.signal.addEventListener('abort', () => void this.kill(), { once: true });
    } finally {
      clearTimeout(timer);
      if (onAbort) plan.signal?.removeEventListener('abort', onAbort);
      died.catch(() => {});
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
