// A typed QEMU command line for the build VM. Every option says why it is there; nothing else is
// passed. The launcher itself (spawn, deadlines, cleanup) is in vm.ts.
import { execa } from 'execa';
import { MissingToolError } from '../errors.js';

export type Accel = 'kvm' | 'tcg';
/**
 * microvm: no PCI, no firmware tables to walk, virtio-mmio devices: the fastest boot under TCG (measured
 * here, agent ready in a median 1594 ms against 1950 ms for pc with qboot). pc is the fallback.
 */
export type Machine = 'microvm' | 'pc';

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
  readonly accel: Accel;
  readonly machine: Machine;
  readonly memoryMiB: number;
  readonly cpus: number;
  readonly kernel: string;
  readonly initrd: string;
  readonly disks: readonly QemuDisk[];
  readonly network: boolean;
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

/** The virtio device model name for this machine: -device (mmio) on microvm, -pci on pc. */
function virtio(machine: Machine, kind: 'blk' | 'serial' | 'net' | 'vhost-vsock'): string {
  const base = kind === 'vhost-vsock' ? 'vhost-vsock' : `virtio-${kind}`;
  return machine === 'microvm' ? `${base}-device` : `${base}-pci`;
}

/** Kernel command line; each flag with its reason. */
export function kernelCmdline(config: QemuConfig): string {
  const flags = [
    'console=ttyS0', // the only console is the serial port QEMU pipes to us (consoleTail)
    'quiet', // printing boot messages through an emulated UART costs real time under TCG
    'loglevel=3', // ...but errors still show up in consoleTail when a boot fails
    'panic=-1', // reboot at once on panic; with -no-reboot QEMU then exits and we notice
    'reboot=t', // reboot by triple fault: needs no ACPI or keyboard controller, and -no-reboot turns it into an exit
    'mitigations=off', // nothing in this one-tenant guest to protect from itself; spares TCG the overhead
    'tsc=reliable', // trust the TSC instead of watching it against slower clocks (emulated, they all drift)
    'no_timer_check', // skip the IO-APIC timer sanity check that waits for ticks
    '8250.nr_uarts=1', // probe one UART, not four
    'random.trust_cpu=on', // do not wait for entropy: seed from RDRAND (also under TCG's -cpu max)
    'cryptomgr.notests', // skip the crypto self-tests: 0.4 s of emulated SHA and AES at every boot under TCG
    `dockvm.transport=${config.agent.transport}`, // tells the agent which channel to open
    // the module groups init loads: the machine's virtio bus, the agent channel, loop devices (through
    // which the guest reads each file of a disk of several at its offset), the network driver
    `dockvm.load=${[config.machine === 'microvm' ? 'mmio' : 'pci', config.agent.transport, ...(config.disks.some((d) => d.format === 'vmdk') ? ['loop'] : []), ...(config.network ? ['net'] : [])].join(',')}`,
  ];
  // Under TCG the guest calibrates its TSC against the PIT, and on a busy host that fails ("Unable to
  // calibrate against PIT") and microvm has no HPET to fall back on: the boot then hangs. TCG's TSC is
  // the host's, so tell the guest its rate when the host knows it exactly.
  if (config.accel === 'tcg' && config.hostTscKhz !== undefined) flags.push(`tsc_early_khz=${config.hostTscKhz}`);
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
  if (config.machine === 'microvm') {
    // microvm: virtio-mmio, no PCI bus, qboot-based firmware (bios-microvm.bin); ACPI stays on so the
    // guest finds the virtio-mmio devices and can power off. No option ROMs to load.
    add('-M', 'microvm,x-option-roms=off,rtc=on,acpi=on');
  } else {
    // pc with qboot: the same firmware speed as microvm where microvm is missing
    add('-M', 'pc', '-bios', 'qboot.rom');
  }
  if (config.accel === 'kvm') {
    add('-accel', 'kvm', '-cpu', 'host'); // hardware virtualisation; the host CPU's features as they are
  } else {
    // TCG: pure emulation. -cpu max gives the guest every feature TCG emulates (RDRAND, x86-64-v2)
    add('-accel', 'tcg', '-cpu', 'max');
  }
  add('-m', String(config.memoryMiB)); // guest RAM, MiB (the build's buildVMMemorySize)
  add('-smp', String(config.cpus));
  add('-no-reboot'); // a guest reboot (shutdown or panic) ends QEMU instead of booting again
  add('-display', 'none'); // no window; unlike -nographic it leaves stdio alone
  // the guest console (ttyS0) on QEMU's stdout, which we keep the tail of for error messages;
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
    add('-device', `${virtio(config.machine, 'blk')},drive=disk${i},serial=${disk.serial}`);
  });

  if (config.agent.transport === 'serial') {
    // the agent's channel: a virtio-serial port named for the agent, backed by our unix socket (QEMU connects)
    add('-chardev', `socket,id=agent,path=${config.agent.socketPath.replace(/,/g, ',,')}`);
    add('-device', `${virtio(config.machine, 'serial')},max_ports=2`);
    add('-device', 'virtserialport,chardev=agent,name=org.dockvm.agent');
  } else {
    add('-device', `${virtio(config.machine, 'vhost-vsock')},guest-cid=${config.agent.cid}`); // the agent's channel
  }

  if (config.network) {
    // user-mode networking: outbound only, no host setup or privileges; DNS at 10.0.2.3
    add('-netdev', 'user,id=net0', '-device', `${virtio(config.machine, 'net')},netdev=net0`);
  }
  return args;
}

export interface QemuBinary {
  readonly path: string;
  /** e.g. "7.2.22" */
  readonly version: string;
}

let found: Promise<QemuBinary> | undefined;

/** DOCKVM_QEMU or qemu-system-x86_64 on PATH, with its version. */
export function findQemu(env: NodeJS.ProcessEnv = process.env): Promise<QemuBinary> {
  const path = env.DOCKVM_QEMU || 'qemu-system-x86_64';
  if (env === process.env && found) return found;
  const probe = execa(path, ['--version'], { env, stdin: 'ignore' }).then(
    ({ stdout }) => ({ path, version: /version (\S+)/.exec(stdout)?.[1] ?? 'unknown' }),
    (err: unknown) => {
      throw new MissingToolError(`cannot run ${path}: install qemu-system-x86 (apt-get install qemu-system-x86) or set DOCKVM_QEMU`, { cause: err, command: path });
    },
  );
  if (env === process.env) {
    found = probe;
    probe.catch(() => (found = undefined));
  }
  return probe;
}
