// The QEMU command line each architecture's row gives (src/vm/architectures.ts), under KVM and under TCG.
// No VM boots here; the VM tests boot these command lines for real (amd64: test/vm/vm.test.ts, arm64:
// test/vm/arm64.test.ts).
import test from 'ava';
import { VmError } from '../../src/errors.js';
import { ARCHITECTURES, ARCHITECTURE_NAMES, type ArchitectureRow } from '../../src/vm/architectures.js';
import { type Accel, type QemuConfig, kernelCmdline, machineRow, qemuArgs } from '../../src/vm/qemu.js';

function config(architecture: ArchitectureRow, accel: Accel, more: Partial<QemuConfig> = {}): QemuConfig {
  return {
    architecture,
    accel,
    machine: architecture.defaultMachine,
    memoryMiB: 512,
    cpus: 1,
    kernel: '/k/vmlinuz',
    initrd: '/k/initrd.cpio',
    disks: [
      { path: '/d/lower0.sqfs', readOnly: true, name: 'lower0', format: 'raw' },
      { path: '/d/scratch,1.ext4', readOnly: false, name: 'scratch', format: 'raw' },
    ],
    network: true,
    agent: { transport: 'serial', socketPath: '/run/agent.sock' },
    qmpSocketPath: '/run/qmp,1.sock',
    hostTscKhz: 2_100_000,
    ...more,
  };
}

/** The value after each occurrence of `flag`. */
function values(args: string[], flag: string): string[] {
  return args.flatMap((arg, i) => (arg === flag ? [args[i + 1]!] : []));
}

/** What each row must produce, as a person reading the row would expect it. */
const expected = {
  amd64: { machine: 'microvm,x-option-roms=off,rtc=on,acpi=on', tcgCpu: 'qemu64,model=2,+cx16,+lahf-lm,+popcnt,+pni,+sse4.1,+sse4.2,+ssse3,+rdrand', console: 'ttyS0', bus: 'mmio', suffix: '-device', tsc: true },
  arm64: { machine: 'virt,gic-version=max', tcgCpu: 'max,pauth=off', console: 'ttyAMA0', bus: 'mmio', suffix: '-device', tsc: false },
} as const;

for (const name of ARCHITECTURE_NAMES) {
  const row = ARCHITECTURES[name];
  const want = expected[name];
  for (const accel of ['kvm', 'tcg'] as const) {
    test(`${name} under ${accel}: its machine, CPU, console, virtio-${want.bus} devices (disks hot-added later) and kernel flags`, (t) => {
      const args = qemuArgs(config(row, accel));
      t.deepEqual(values(args, '-M'), [want.machine]);
      t.deepEqual(values(args, '-accel'), [accel]);
      t.deepEqual(values(args, '-cpu'), [accel === 'kvm' ? 'host' : want.tcgCpu]);
      const devices = values(args, '-device');
      t.deepEqual(
        devices.filter((d) => d.startsWith('virtio-')).map((d) => d.split(',')[0]),
        [`virtio-scsi${want.suffix}`, `virtio-serial${want.suffix}`, `virtio-net${want.suffix}`],
      );
      // the disks are LUNs of the SCSI controller, added over QMP once the guest runs (qemu-args.test.ts)
      t.true(devices.includes(`virtio-scsi${want.suffix},id=scsi`));
      t.false(args.some((arg) => arg.includes('/d/')), 'no disk on the command line');
      t.true(values(args, '-chardev').includes('socket,id=qmp,path=/run/qmp,,1.sock'), 'a comma in a path is doubled');
      t.deepEqual(values(args, '-kernel'), ['/k/vmlinuz']);
      const cmdline = values(args, '-append')[0]!.split(' ');
      t.is(cmdline[0], `console=${want.console}`);
      t.true(cmdline.includes(`dockvm.load=${want.bus},serial,net`));
      // the host's TSC rate means something to an x86 guest under TCG only
      t.is(cmdline.includes('tsc_early_khz=2100000'), want.tsc && accel === 'tcg');
      t.is(cmdline.includes('reboot=t'), name === 'amd64', 'reboot by triple fault is an x86 thing');
      t.true(cmdline.includes('init_on_alloc=0'), 'pages are not zeroed at allocation: emulated work on every page a script writes');
    });
  }
}

test('amd64 on pc: PCI devices and qboot; vsock as a PCI device too', (t) => {
  const args = qemuArgs(config(ARCHITECTURES.amd64, 'tcg', { machine: 'pc', agent: { transport: 'vsock', cid: 7 }, network: false }));
  t.deepEqual(values(args, '-M'), ['pc']);
  t.deepEqual(values(args, '-bios'), ['qboot.rom']);
  t.deepEqual(values(args, '-device').map((d) => d.split(',')[0]), ['virtio-scsi-pci', 'vhost-vsock-pci']);
  t.true(kernelCmdline(config(ARCHITECTURES.amd64, 'tcg', { machine: 'pc', agent: { transport: 'vsock', cid: 7 }, network: false })).includes('dockvm.load=pci,vsock'));
});

test('arm64 on virt-pci: the same machine with its devices on PCI', (t) => {
  const args = qemuArgs(config(ARCHITECTURES.arm64, 'tcg', { machine: 'virt-pci' }));
  t.deepEqual(values(args, '-M'), ['virt,gic-version=max']);
  t.deepEqual(values(args, '-device').filter((d) => d.startsWith('virtio-')).map((d) => d.split(',')[0]), ['virtio-scsi-pci', 'virtio-serial-pci', 'virtio-net-pci']);
  t.true(values(args, '-append')[0]!.includes('dockvm.load=pci,serial,net'));
});

test("a machine another architecture's row has is refused, naming the ones there are", (t) => {
  t.throws(() => qemuArgs(config(ARCHITECTURES.arm64, 'tcg', { machine: 'microvm' })), { instanceOf: VmError, message: 'machine microvm is not one dockvm boots arm64 guests on (virt, virt-pci)' });
  t.throws(() => machineRow(ARCHITECTURES.amd64, 'virt'), { instanceOf: VmError, message: /\(microvm, pc\)$/ });
});
