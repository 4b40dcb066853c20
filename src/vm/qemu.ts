// A typed QEMU command line for the build VM. Every option says why it is there; nothing else is
// passed. The launcher itself (spawn, deadlines, cleanup) is in vm.ts.
import { execa } from 'execa';
import { MissingToolError, VmError } from '../errors.js';
import { type ArchitectureRow, type MachineRow, archEnv } from './architectures.js';

export type Accel = 'kvm' | 'tcg';
/** A machine of the architecture's row (architectures.ts): microvm or pc for amd64, virt for arm64. */
export type Machine = string;

export interface QemuDisk {
  readonly path: string;
  readonly readOnly: boolean;
  /** the virtio-blk serial the guest sees in /sys/block/vdX/serial (at most 20 bytes) */
  readonly serial: string;
  /** raw: the file is the disk; vmdk: the file is a descriptor of files end to end (disks.ts) */
  readonly format: 'raw' | 'vmdk';
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
function virtio(config: QemuConfig, kind: 'blk' | 'serial' | 'net' | 'vhost-vsock'): string {
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
    'random.trust_cpu=on', // do not wait for entropy: seed from the CPU's RNG where it has one (RDRAND under TCG's -cpu max)
    'cryptomgr.notests', // skip the crypto self-tests: 0.4 s of emulated SHA and AES at every boot under TCG
    // no zeroing of every page at allocation (Debian's kernels turn it on): hardening this one-tenant guest
    // does not need, and under TCG it is emulated work on every page a script writes (a 300 MB dd into the
    // upper took 28 % less time without it, into tmpfs 45 % less)
    'init_on_alloc=0',
    ...config.architecture.cmdline, // the architecture's own (architectures.ts)
    `dockvm.transport=${config.agent.transport}`, // tells the agent which channel to open
    // the module groups init loads: the machine's virtio bus, the agent channel, loop devices (through
    // which the guest reads each file of a disk of several at its offset), the network driver
    `dockvm.load=${[machineRow(config.architecture, config.machine).virtio, config.agent.transport, ...(config.disks.some((d) => d.format === 'vmdk') ? ['loop'] : []), ...(config.network ? ['net'] : [])].join(',')}`,
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
  add('-M', machine.qemu, ...machine.extraArgs); // the architecture's machine (architectures.ts says why each)
  // kvm: hardware virtualisation, the host CPU's features as they are; tcg: pure emulation, with the
  // CPU model the row chose by measurement
  add('-accel', config.accel, '-cpu', config.architecture.cpu[config.accel]);
  add('-m', String(config.memoryMiB)); // guest RAM, MiB (the build's buildVMMemorySize)
  add('-smp', String(config.cpus));
  add('-no-reboot'); // a guest reboot (shutdown or panic) ends QEMU instead of booting again
  add('-display', 'none'); // no window; unlike -nographic it leaves stdio alone
  // the guest console (ttyS0, ttyAMA0) on QEMU's stdout, which we keep the tail of for error messages;
  // signal=off: a ^C typed into our terminal is not the guest's to receive
  add('-chardev', 'stdio,id=console,signal=off', '-serial', 'chardev:console');
  add('-kernel', config.kernel, '-initrd', config.initrd, '-append', kernelCmdline(config));

  config.disks.forEach((disk, i) => {
    // raw images, or a VMDK descriptor of files end to end (read-only); cache=unsafe for writable disks:
    // a throwaway VM needs no flushes to survive a host crash, and the data is in the file once QEMU
    // exits. Read-only ones are opened read-only.
    const drive = [`file=${disk.path.replace(/,/g, ',,')}`, 'if=none', `id=disk${i}`, `format=${disk.format}`];
    drive.push(disk.readOnly ? 'readonly=on' : 'cache=unsafe');
    add('-drive', drive.join(','));
    add('-device', `${virtio(config, 'blk')},drive=disk${i},serial=${disk.serial}`);
  });

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
  const probe = execa(path, ['--version'], { env, stdin: 'ignore' }).then(
    ({ stdout }) => ({ path, version: /version (\S+)/.exec(stdout)?.[1] ?? 'unknown' }),
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
