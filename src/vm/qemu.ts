// A typed QEMU command line for the build VM. Every option says why it is there; nothing else is
// passed. The launcher itself (spawn, deadlines, cleanup) is in vm.ts.
import { open } from 'node:fs/promises';
import { execa } from 'execa';
import { MissingToolError, VmError } from '../errors.js';
import { memoized } from './file-memo.js';
import { findOnPath } from './paths.js';
import { type ArchitectureRow, type MachineRow, archEnv } from './architectures.js';

export type Accel = 'kvm' | 'tcg';
/** A machine of the architecture's row (architectures.ts): microvm or pc for amd64, virt for arm64. */
export type Machine = string;

export interface QemuDisk {
  readonly path: string;
  readonly readOnly: boolean;
  /** what the guest finds it by: the SCSI product it reports, in /sys/block/sdX/device/model (DISK_NAME) */
  readonly name: string;
  /** raw: the file is the disk; vmdk: the file is a descriptor of files end to end (disks.ts) */
  readonly format: 'raw' | 'vmdk';
}

/** A disk's name: what fits the SCSI product field (16 bytes) and reads back the same from sysfs. */
export const DISK_NAME = /^[A-Za-z0-9_.@+-]{1,16}$/;

/**
 * A guest saved to or restored from a snapshot (snapshot.ts): its RAM is a file, mapped shared while it
 * boots and is saved (the file then is the snapshot's memory), privately when restored (each restored
 * VM writes into copies of the pages it touches; the file stays as it was).
 */
export interface SnapshotMemory {
  readonly path: string;
  readonly role: 'save' | 'restore';
}

export type AgentChannel =
  | { readonly transport: 'serial'; readonly socketPath: string }
  | { readonly transport: 'vsock'; readonly cid: number };

export interface QemuConfig {
  /** the guest's architecture: its QEMU machine, CPU, console and kernel flags */
  readonly architecture: ArchitectureRow;
  readonly accel: Accel;
  /** one of architecture.machines */
  readonly machine: Machine;
  readonly memoryMiB: number;
  readonly cpus: number;
  readonly kernel: string;
  readonly initrd: string;
  readonly disks: readonly QemuDisk[];
  readonly network: boolean;
  /** with network: passt's socket (network.ts, the host's loopback closed); absent: QEMU's user networking */
  readonly networkSocket?: string;
  readonly agent: AgentChannel;
  /** the unix socket (ours, listening) QEMU connects its QMP monitor to: disks are attached through it */
  readonly qmpSocketPath: string;
  /** set when the VM is saved as a snapshot or restored from one */
  readonly snapshot?: SnapshotMemory;
  /** appended to the kernel command line as is */
  readonly extraCmdline?: string;
  /** the host's TSC rate, when known (hostTscKhz()) */
  readonly hostTscKhz?: number;
}

/** The host's TSC rate in kHz, when /proc/cpuinfo vouches for it (constant_tsc + tsc_known_freq). */
export function hostTscKhz(cpuinfo: string): number | undefined {
  const flags = /^flags\s*:(.*)$/m.exec(cpuinfo)?.[1]?.split(/\s+/) ?? [];
  const mhz = /^cpu MHz\s*:\s*([\d.]+)/m.exec(cpuinfo)?.[1];
  if (!flags.includes('constant_tsc') || !flags.includes('tsc_known_freq') || mhz === undefined) return undefined;
  return Math.round(Number(mhz) * 1000);
}

/** The machine's row; an unknown name is an error naming the ones there are. */
export function machineRow(architecture: ArchitectureRow, machine: Machine): MachineRow {
  const row = Object.hasOwn(architecture.machines, machine) ? architecture.machines[machine] : undefined;
  if (row === undefined) {
    throw new VmError(`machine ${machine} is not one dockvm boots ${architecture.architecture} guests on (${Object.keys(architecture.machines).join(', ')})`);
  }
  return row;
}

/** The virtio device model name for this machine: -device (virtio-mmio) or -pci. */
function virtio(config: QemuConfig, kind: 'scsi' | 'serial' | 'net' | 'vhost-vsock'): string {
  const base = kind === 'vhost-vsock' ? 'vhost-vsock' : `virtio-${kind}`;
  return machineRow(config.architecture, config.machine).virtio === 'mmio' ? `${base}-device` : `${base}-pci`;
}

/** Kernel command line; each flag with its reason. */
export function kernelCmdline(config: QemuConfig): string {
  const flags = [
    `console=${config.architecture.console}`, // the only console is the serial port QEMU pipes to us (consoleTail)
    'quiet', // printing boot messages through an emulated UART costs real time under TCG
    'loglevel=3', // ...but errors still show up in consoleTail when a boot fails
    'panic=-1', // reboot at once on panic; with -no-reboot QEMU then exits and we notice
    'mitigations=off', // nothing in this one-tenant guest to protect from itself; spares TCG the overhead
    'random.trust_cpu=on', // do not wait for entropy: seed from the CPU's RNG where it has one (RDRAND in amd64's TCG CPU, RNDR in arm64's)
    'cryptomgr.notests', // skip the crypto self-tests: 0.4 s of emulated SHA and AES at every boot under TCG
    // no zeroing of every page at allocation (Debian's kernels turn it on): hardening this one-tenant guest
    // does not need, and under TCG it is emulated work on every page a script writes (a 300 MB dd into the
    // upper took 28 % less time without it, into tmpfs 45 % less)
    'init_on_alloc=0',
    ...config.architecture.cmdline, // the architecture's own (architectures.ts)
    `dockvm.transport=${config.agent.transport}`, // tells the agent which channel to open
    // the module groups init loads: the machine's virtio bus, the agent channel, loop devices (through
    // which the guest reads each file of a disk of several at its offset: a snapshot cannot know whether
    // a build restored from it will have one), the network driver
    `dockvm.load=${[machineRow(config.architecture, config.machine).virtio, config.agent.transport, ...(config.snapshot || config.disks.some((d) => d.format === 'vmdk') ? ['loop'] : []), ...(config.network ? ['net'] : [])].join(',')}`,
    // no scan of the SCSI bus at boot (256 targets probed one by one under emulation): the host attaches
    // each disk at a LUN of its own and the hotplug event adds exactly that one (scsiDiskDevice)
    'scsi_mod.scan=none',
  ];
  // TCG's TSC is the host's: tell an x86 guest its rate when the host knows it exactly (architectures.ts, tscFromHost).
  if (config.architecture.tscFromHost && config.accel === 'tcg' && config.hostTscKhz !== undefined) flags.push(`tsc_early_khz=${config.hostTscKhz}`);
  if (config.network) flags.push('dockvm.network=user'); // init configures eth0 for QEMU's user-mode net
  if (config.extraCmdline) flags.push(config.extraCmdline); // DOCKVM_KERNEL_ARGS: for debugging boots
  return flags.join(' ');
}

export function qemuArgs(config: QemuConfig): string[] {
  const args: string[] = [];
  const add = (...more: string[]): void => void args.push(...more);

  add('-nodefaults'); // no default NIC, VGA, floppy, CD-ROM, monitor or serial: only what we list
  add('-no-user-config'); // ignore /etc/qemu config files: the same VM on every host
  add('-name', 'dockvm'); // recognisable in ps
  // seccomp: QEMU may not spawn processes, gain privileges, use obsolete syscalls or change resource limits
  add('-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny');
  const machine = machineRow(config.architecture, config.machine);
  // the architecture's machine (architectures.ts says why each); a snapshot's RAM is the backend named
  // "ram" (below) instead of anonymous memory
  add('-M', `${machine.qemu}${config.snapshot ? ',memory-backend=ram' : ''}`, ...machine.extraArgs);
  // kvm: hardware virtualisation, the host CPU's features as they are; tcg: pure emulation, with the
  // CPU model the row chose by measurement
  add('-accel', config.accel, '-cpu', config.architecture.cpu[config.accel]);
  add('-m', String(config.memoryMiB)); // guest RAM, MiB (the build's buildVMMemorySize)
  if (config.snapshot) {
    // share=on while saving: the guest's RAM is written into the file, which becomes the snapshot's
    // memory (migration then skips it: x-ignore-shared). share=off when restoring: the file is mapped
    // privately, its pages read in as the guest touches them, and what the guest writes stays in this
    // QEMU. That is what makes a restore cheap: no copy of the RAM, in or out.
    const share = config.snapshot.role === 'save' ? 'on' : 'off';
    add('-object', `memory-backend-file,id=ram,size=${config.memoryMiB}M,mem-path=${config.snapshot.path.replace(/,/g, ',,')},share=${share}`);
  }
  add('-smp', String(config.cpus));
  add('-no-reboot'); // a guest reboot (shutdown or panic) ends QEMU instead of booting again
  add('-display', 'none'); // no window; unlike -nographic it leaves stdio alone
  // the guest console (ttyS0, ttyAMA0) on QEMU's stdout, which we keep the tail of for error messages;
  // signal=off: a ^C typed into our terminal is not the guest's to receive
  add('-chardev', 'stdio,id=console,signal=off', '-serial', 'chardev:console');
  add('-kernel', config.kernel, '-initrd', config.initrd, '-append', kernelCmdline(config));

  // QMP, on our socket: how disks are attached once the guest runs, and how snapshots are saved and loaded
  add('-chardev', `socket,id=qmp,path=${config.qmpSocketPath.replace(/,/g, ',,')}`, '-mon', 'chardev=qmp,mode=control');
  if (config.snapshot?.role === 'restore') add('-incoming', 'defer'); // the state comes through QMP (migrate-incoming)

  // Disks are LUNs of one virtio-scsi controller, hot-added once the guest runs (blockdevOptions,
  // scsiDiskDevice): a guest restored from a snapshot has no disks of its own, and the same way serves a
  // booted one. A controller takes any number of them, where microvm has 24 virtio transports in all.
  add('-device', `${virtio(config, 'scsi')},id=scsi`);

  if (config.agent.transport === 'serial') {
    // the agent's channel: a virtio-serial port named for the agent, backed by our unix socket (QEMU connects)
    add('-chardev', `socket,id=agent,path=${config.agent.socketPath.replace(/,/g, ',,')}`);
    add('-device', `${virtio(config, 'serial')},max_ports=2`);
    add('-device', 'virtserialport,chardev=agent,name=org.dockvm.agent');
  } else {
    add('-device', `${virtio(config, 'vhost-vsock')},guest-cid=${config.agent.cid}`); // the agent's channel
  }

  if (config.network) {
    // user-mode networking: outbound only, no host setup or privileges; DNS at 10.0.2.3. Through passt
    // (network.ts says why) unless DOCKVM_HOST_LOOPBACK=1 asked for QEMU's own, which maps 10.0.2.2 to 127.0.0.1
    const netdev = config.networkSocket === undefined ? 'user,id=net0' : `stream,id=net0,server=off,addr.type=unix,addr.path=${config.networkSocket.replace(/,/g, ',,')}`;
    add('-netdev', netdev, '-device', `${virtio(config, 'net')},netdev=net0`);
  }
  return args;
}

/**
 * The QMP blockdev-add arguments of disk `i`'s backend: a raw image, or a VMDK descriptor of files end
 * to end (read-only); writable ones without flushes (cache=unsafe): a throwaway VM needs none to survive
 * a host crash, and the data is in the file once QEMU exits. Opened over QMP, like the device, so that
 * a disk QEMU cannot open is an error about that disk, never one about starting QEMU.
 */
export function blockdevOptions(disk: QemuDisk, i: number): Record<string, unknown> {
  if (!DISK_NAME.test(disk.name)) throw new VmError(`cannot attach ${disk.path} as ${JSON.stringify(disk.name)}: a disk's name is 1 to 16 letters, digits or _.@+-`);
  return {
    driver: disk.format,
    'node-name': `disk${i}`,
    'read-only': disk.readOnly,
    ...(disk.readOnly ? {} : { cache: { 'no-flush': true } }),
    file: { driver: 'file', filename: disk.path },
  };
}

/**
 * The QMP device_add arguments that attach disk `i` (its blockdevOptions) to the guest: a SCSI disk at LUN i+1
 * of target 0 (the kernel adds a LUN other than 0 directly, where LUN 0 would start a scan of the
 * target), reporting the disk's name as its product for the guest to find it by.
 */
export function scsiDiskDevice(disk: QemuDisk, i: number): Record<string, unknown> {
  return { driver: 'scsi-hd', id: `disk${i}`, bus: 'scsi.0', channel: 0, 'scsi-id': 0, lun: i + 1, drive: `disk${i}`, product: disk.name };
}

/**
 * `path --version`'s version, remembered while the binary is unchanged (file-memo.ts) when it is QEMU
 * itself, an ELF file: a wrapper script may run another QEMU each time.
 */
async function qemuVersion(path: string, env: NodeJS.ProcessEnv): Promise<string> {
  const ask = async () => /version (\S+)/.exec((await execa(path, ['--version'], { env, stdin: 'ignore' })).stdout)?.[1] ?? 'unknown';
  const resolved = path.includes('/') ? path : findOnPath(path, env);
  const head = resolved === undefined ? undefined : await firstBytes(resolved, 4);
  if (resolved === undefined || !head?.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) return ask();
  return memoized('qemu-version', [resolved], async () => ({ value: await ask(), files: [resolved] }), { env });
}

async function firstBytes(path: string, count: number): Promise<Buffer | undefined> {
  const file = await open(path, 'r').catch(() => undefined);
  if (!file) return undefined;
  try {
    const { buffer, bytesRead } = await file.read(Buffer.alloc(count), 0, count, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await file.close();
  }
}

export interface QemuBinary {
  readonly path: string;
  /** e.g. "7.2.22" */
  readonly version: string;
}

const found = new Map<string, Promise<QemuBinary>>();

/** The architecture's QEMU (DOCKVM_QEMU, DOCKVM_QEMU_ARM64…, else its binary on PATH), with its version. */
export function findQemu(architecture: ArchitectureRow, env: NodeJS.ProcessEnv = process.env): Promise<QemuBinary> {
  const variable = archEnv(architecture, 'DOCKVM_QEMU');
  const path = env[variable] || architecture.qemu.binary;
  const known = env === process.env ? found.get(architecture.architecture) : undefined;
  if (known) return known;
  const { package: pkg } = architecture.qemu;
  const probe = qemuVersion(path, env).then(
    (version) => ({ path, version }),
    (err: unknown) => {
      throw new MissingToolError(
        `cannot run ${path}, which ${architecture.architecture} build VMs need: install ${pkg} (apt-get install ${pkg}) or set ${variable}`,
        { cause: err, command: path },
      );
    },
  );
  if (env === process.env) {
    found.set(architecture.architecture, probe);
    probe.catch(() => found.delete(architecture.architecture));
  }
  return probe;
}
