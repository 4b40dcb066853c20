// The architectures dockvm runs build VMs for: one row each, so that the rest of src/vm/ reads the row
// instead of asking which architecture it is. The VM for a platform is that platform's own machine,
// fully emulated (TCG) unless the host is of the same architecture and KVM works: no binfmt, no host
// setup. Adding an architecture (riscv64, ppc64le) is a row here and a test of the arguments it gives.
//
// Measured here (TCG, QEMU 7.2, Debian's 6.1 cloud kernels, busy 2-core host) where a row says so.
import { arch } from 'node:os';

/** GOARCH, as image configs and OCI platforms name architectures. */
export type Architecture = 'amd64' | 'arm64';

/** A machine QEMU offers for an architecture: how its devices sit on the guest's bus. */
export interface MachineRow {
  /** QEMU's -M argument (with the options this machine needs) */
  readonly qemu: string;
  /** more QEMU arguments for this machine (firmware) */
  readonly extraArgs: readonly string[];
  /** how virtio devices attach: virtio-mmio (`-device virtio-scsi-device`) or PCI (`virtio-scsi-pci`) */
  readonly virtio: 'mmio' | 'pci';
  /** the firmware file it needs, where Debian's QEMU packages put it (any one will do; none: no firmware) */
  readonly firmware: readonly string[];
  /**
   * Whether a booted, idle guest of this machine is saved once and restored per build (snapshot.ts,
   * vm.ts) instead of booted; false: every VM boots. Either way the disks are LUNs hot-added to the
   * machine's virtio-scsi controller (virtio-scsi-device on virtio-mmio, virtio-scsi-pci on PCI), which
   * needs no PCI hotplug: the SCSI bus's own events announce them.
   */
  readonly snapshots: boolean;
}

export interface ArchitectureRow {
  readonly architecture: Architecture;
  /** the OCI platform variant its images carry, when the architecture has one in use */
  readonly variant?: string;
  /** process.arch of a host of this architecture: KVM can run this guest only there */
  readonly nodeArch: NodeJS.Architecture;
  /** e_machine in an ELF header of this architecture's programs */
  readonly elfMachine: number;
  /** the Debian architecture: its packages, its dpkg name */
  readonly debian: string;
  /** the GNU triplet: compiler prefix, multiarch library directory */
  readonly triplet: string;
  readonly qemu: {
    readonly binary: string;
    /** the Debian package with the binary */
    readonly package: string;
  };
  /** the machines it can boot, the first the default (DOCKVM_MACHINE picks another) */
  readonly machines: Readonly<Record<string, MachineRow>>;
  readonly defaultMachine: string;
  /** -cpu under each accelerator */
  readonly cpu: { readonly kvm: string; readonly tcg: string };
  /** the serial port QEMU's console is on, as the guest kernel names it */
  readonly console: string;
  /** kernel command-line flags of this architecture, each with its reason */
  readonly cmdline: readonly string[];
  /**
   * Under TCG the x86 guest calibrates its TSC against the PIT, which fails on a busy host (microvm has
   * no HPET to fall back on) and hangs the boot: the host's TSC rate is passed instead (tsc_early_khz).
   */
  readonly tscFromHost: boolean;
  /** the Debian kernel metapackage the guest kernel comes from (kernel/fetch) */
  readonly kernelPackage: string;
  /** what the kernel file is: a bzImage (its vmlinux is booted through PVH when it has the entry) or an arm64 Image */
  readonly kernelFormat: 'bzImage' | 'Image';
  /** the compiler that builds the guest agent, static, for this architecture */
  readonly compiler: string;
  /** the Debian packages with that compiler and its static libc, on a host of another architecture */
  readonly crossCompilerPackages: readonly string[];
  /** suffix of the environment variables that pick this architecture's pieces (DOCKVM_QEMU, DOCKVM_KERNEL…) */
  readonly envSuffix: string;
}

export const ARCHITECTURES: Readonly<Record<Architecture, ArchitectureRow>> = {
  amd64: {
    architecture: 'amd64',
    nodeArch: 'x64',
    elfMachine: 62, // EM_X86_64
    debian: 'amd64',
    triplet: 'x86_64-linux-gnu',
    qemu: { binary: 'qemu-system-x86_64', package: 'qemu-system-x86' },
    machines: {
      // microvm: no PCI, no firmware tables to walk, virtio-mmio devices: the fastest boot under TCG
      // (agent ready in a median 1594 ms against 1950 ms for pc with qboot). ACPI stays on so the guest
      // finds the virtio-mmio devices and can power off; no option ROMs to load.
      microvm: {
        qemu: 'microvm,x-option-roms=off,rtc=on,acpi=on',
        extraArgs: [],
        virtio: 'mmio',
        firmware: ['/usr/share/qemu/bios-microvm.bin', '/usr/share/seabios/bios-microvm.bin'],
        snapshots: true,
      },
      // pc with qboot: the same firmware speed as microvm, where microvm is missing
      pc: { qemu: 'pc', extraArgs: ['-bios', 'qboot.rom'], virtio: 'pci', firmware: ['/usr/share/qemu/qboot.rom', '/usr/share/seabios/qboot.rom'], snapshots: true },
    },
    defaultMachine: 'microvm',
    // TCG: the x86-64-v2 level (what RHEL 9 and most distributions build for) and RDRAND (the kernel
    // seeds its RNG from it: random.trust_cpu), and no more. Measured here (2026-12-02, 2 busy cores, QEMU
    // 7.2, three alternated runs, QEMU's CPU time): a runAsRoot `dpkg -i` of curl and its 15 dependencies
    // cost 0.73x the CPU time under this model that it cost under -cpu max, 200 fork+execs 0.88x; with
    // AVX2 (-cpu max) glibc picks AVX2 string functions, which TCG emulates slowly. The price: an image
    // built for x86-64-v3 (RHEL 10) does not run its programs. -smp 2 with multi-threaded TCG cost 1.14x
    // (max) to 1.42x (this model) the CPU time for the same step and was not faster on this shared host.
    // It has no ERMS or FSRM either: with them the kernel's and glibc's copies are `rep movsb`, which TCG
    // runs a byte at a time (a 300 MB dd into the upper took 30-45 % longer under -cpu max than without).
    // model=2: qemu64's own model (107) makes the kernel take it for a K8 of revision C or later and set
    // REP_GOOD, so that its memcpy, copy_to/from_user and clear_page become `rep movsq`/`rep stosq`,
    // which TCG (QEMU 7.2) also runs one element per translated-block loop. Below revision C (model < 4)
    // the kernel keeps its unrolled movq loops: a 200 MB write into a tmpfs took 0.72x the time.
    cpu: { kvm: 'host', tcg: 'qemu64,model=2,+cx16,+lahf-lm,+popcnt,+pni,+sse4.1,+sse4.2,+ssse3,+rdrand' },
    console: 'ttyS0',
    cmdline: [
      'reboot=t', // reboot by triple fault: needs no ACPI or keyboard controller, and -no-reboot turns it into an exit
      'tsc=reliable', // trust the TSC instead of watching it against slower clocks (emulated, they all drift)
      'no_timer_check', // skip the IO-APIC timer sanity check that waits for ticks
      '8250.nr_uarts=1', // probe one UART, not four
    ],
    tscFromHost: true,
    kernelPackage: 'linux-image-cloud-amd64',
    kernelFormat: 'bzImage',
    compiler: 'x86_64-linux-gnu-gcc',
    crossCompilerPackages: ['gcc-x86-64-linux-gnu', 'libc6-dev-amd64-cross'],
    envSuffix: '',
  },
  arm64: {
    architecture: 'arm64',
    variant: 'v8',
    nodeArch: 'arm64',
    elfMachine: 183, // EM_AARCH64
    debian: 'arm64',
    triplet: 'aarch64-linux-gnu',
    qemu: { binary: 'qemu-system-aarch64', package: 'qemu-system-arm' },
    machines: {
      // virt: the kernel Image loaded directly (no firmware), devices described by the device tree, a
      // PL011 UART. gic-version=max: GICv3 under TCG, the host's own under KVM (many arm64 hosts have
      // no GICv2 to emulate).
      // Snapshots: tried here (QEMU 7.2, TCG, 2026-12-02) on virt and virt-pci as on microvm and pc: the
      // guest saved with its GICv3 and generic timer restores in 0.6 s (against a 12 s boot) and reads
      // LUNs hot-added after the restore.
      virt: { qemu: 'virt,gic-version=max', extraArgs: [], virtio: 'mmio', firmware: [], snapshots: true },
      'virt-pci': { qemu: 'virt,gic-version=max', extraArgs: [], virtio: 'pci', firmware: [], snapshots: true },
    },
    defaultMachine: 'virt',
    // TCG: measured here (QEMU 7.2, QEMU's CPU time, medians of 3): boot to agent 1.66 s with cortex-a72
    // (a57, a76, neoverse-n1 the same), 1.98 s with max,pauth=off, 2.23 s with max,pauth-impdef=on, and
    // 5-10x slower everywhere with max's default QARMA pointer authentication; but 100 fork+execs 0.55 s
    // against 0.75 s, and a dpkg/apt-cache-heavy build 14.6 s against 16.8 s (a useradd build the same,
    // 4.1 s against 4.0 s). max (without pauth) also has RNDR, which random.trust_cpu seeds the kernel from.
    cpu: { kvm: 'host', tcg: 'max,pauth=off' },
    console: 'ttyAMA0',
    cmdline: [],
    tscFromHost: false,
    kernelPackage: 'linux-image-cloud-arm64',
    kernelFormat: 'Image',
    compiler: 'aarch64-linux-gnu-gcc',
    crossCompilerPackages: ['gcc-aarch64-linux-gnu', 'libc6-dev-arm64-cross'],
    envSuffix: '_ARM64',
  },
};

/** The row of an image's architecture, or undefined when dockvm has no build VM for it. */
export function architectureRow(architecture: string): ArchitectureRow | undefined {
  return Object.hasOwn(ARCHITECTURES, architecture) ? ARCHITECTURES[architecture as Architecture] : undefined;
}

/** The row of this host's own architecture, when dockvm has one. */
export function hostRow(nodeArch: NodeJS.Architecture = arch() as NodeJS.Architecture): ArchitectureRow | undefined {
  return Object.values(ARCHITECTURES).find((row) => row.nodeArch === nodeArch);
}

/** The host's own architecture's row, else amd64's: what a VM is for when nobody says. */
export function defaultArchitecture(): ArchitectureRow {
  return hostRow() ?? ARCHITECTURES.amd64;
}

/** Whether this host runs `row`'s programs natively (then KVM may run its VM, and its own packages serve). */
export function isNative(row: ArchitectureRow, nodeArch: NodeJS.Architecture = arch() as NodeJS.Architecture): boolean {
  return row.nodeArch === nodeArch;
}

/**
 * The environment variable that picks `row`'s piece `name`: DOCKVM_QEMU for amd64 (as before there were
 * other rows), DOCKVM_QEMU_ARM64 for arm64, and so on.
 */
export function archEnv(row: ArchitectureRow, name: string): string {
  return `${name}${row.envSuffix}`;
}

/** Every architecture dockvm has a row for, in a fixed order. */
export const ARCHITECTURE_NAMES = Object.keys(ARCHITECTURES) as Architecture[];
