// The QEMU command lines dockvm builds, for what no TCG boot here can show: KVM (this host's /dev/kvm is
// a PVM that runs no stock kernel), and that a snapshot is saved and restored with the same device
// model, its key changing with everything the saved guest depends on and with nothing per-run.
import test from 'ava';
import { VmError } from '../../src/errors.js';
import type { BootImage } from '../../src/vm/boot-image.js';
import type { Initramfs } from '../../src/vm/initramfs.js';
import { type QemuConfig, blockdevOptions, kernelCmdline, qemuArgs, scsiDiskDevice } from '../../src/vm/qemu.js';
import { type BootPlan, planSnapshotKey } from '../../src/vm/vm.js';
import { ARCHITECTURES } from '../../src/vm/architectures.js';

const config: QemuConfig = {
  architecture: ARCHITECTURES.amd64,
  accel: 'tcg',
  machine: 'microvm',
  memoryMiB: 512,
  cpus: 1,
  kernel: '/k/vmlinux',
  initrd: '/k/initrd.cpio',
  disks: [],
  network: false,
  agent: { transport: 'serial', socketPath: '/run/agent.sock' },
  qmpSocketPath: '/run/qmp.sock',
};

/** The value after each occurrence of `flag`. */
const values = (args: readonly string[], flag: string) => args.flatMap((arg, i) => (arg === flag ? [args[i + 1]!] : []));

test('KVM runs the host CPU as it is; TCG an emulated model', (t) => {
  const kvm = qemuArgs({ ...config, accel: 'kvm' });
  t.deepEqual(values(kvm, '-accel'), ['kvm']);
  t.deepEqual(values(kvm, '-cpu'), ['host']);
  const tcg = qemuArgs(config);
  t.deepEqual(values(tcg, '-accel'), ['tcg']);
  t.notDeepEqual(values(tcg, '-cpu'), ['host']);
});

test('a VM saved as a snapshot boots with its RAM in a shared file; a restore maps the same file privately and waits for the state', (t) => {
  for (const accel of ['kvm', 'tcg'] as const) {
    const save = qemuArgs({ ...config, accel, snapshot: { path: '/c/snap/memory', role: 'save' } });
    const restore = qemuArgs({ ...config, accel, snapshot: { path: '/c/snap/memory', role: 'restore' } });
    t.deepEqual(values(save, '-object'), ['memory-backend-file,id=ram,size=512M,mem-path=/c/snap/memory,share=on']);
    t.deepEqual(values(restore, '-object'), ['memory-backend-file,id=ram,size=512M,mem-path=/c/snap/memory,share=off']);
    t.regex(values(save, '-M')[0]!, /,memory-backend=ram$/);
    t.deepEqual(values(save, '-incoming'), []);
    t.deepEqual(values(restore, '-incoming'), ['defer']);
    // everything else, the guest's hardware and kernel command line, is the same
    const strip = (args: string[]) => args.filter((arg, i) => !arg.startsWith('memory-backend-file') && arg !== '-incoming' && args[i - 1] !== '-incoming');
    t.deepEqual(strip(restore), strip(save));
    t.deepEqual(values(restore, '-cpu'), values(qemuArgs({ ...config, accel }), '-cpu'));
  }
  // arm64's virt machine the same way (architectures.ts: every machine's row has snapshots on)
  const arm64 = { ...config, architecture: ARCHITECTURES.arm64, machine: 'virt' };
  t.deepEqual(values(qemuArgs({ ...arm64, snapshot: { path: '/c/snap/memory', role: 'save' } }), '-M'), ['virt,gic-version=max,memory-backend=ram']);
  t.true(Object.values(ARCHITECTURES).every((row) => Object.values(row.machines).every((machine) => machine.snapshots)));
  const plain = qemuArgs(config);
  t.deepEqual(values(plain, '-object'), []);
  t.deepEqual(values(plain, '-incoming'), []);
  t.notRegex(values(plain, '-M')[0]!, /memory-backend/);
});

test('disks are not on the command line: each is a backend and a SCSI LUN added over QMP, found by its name', (t) => {
  const disks = [
    { path: '/d/lower.sqfs', readOnly: true, name: 'lower0', format: 'raw' as const },
    { path: '/d/scratch.img', readOnly: false, name: 'scratch', format: 'raw' as const },
    { path: '/d/lowers.vmdk', readOnly: true, name: 'lowers', format: 'vmdk' as const },
  ];
  const args = qemuArgs({ ...config, disks });
  t.false(args.some((arg) => arg.includes('/d/')));
  t.deepEqual(values(args, '-device').filter((d) => d.startsWith('virtio-scsi')), ['virtio-scsi-device,id=scsi']);
  t.deepEqual(blockdevOptions(disks[0]!, 0), { driver: 'raw', 'node-name': 'disk0', 'read-only': true, file: { driver: 'file', filename: '/d/lower.sqfs' } });
  t.deepEqual(blockdevOptions(disks[1]!, 1), { driver: 'raw', 'node-name': 'disk1', 'read-only': false, cache: { 'no-flush': true }, file: { driver: 'file', filename: '/d/scratch.img' } });
  t.is(blockdevOptions(disks[2]!, 2).driver, 'vmdk');
  t.deepEqual(scsiDiskDevice(disks[1]!, 1), { driver: 'scsi-hd', id: 'disk1', bus: 'scsi.0', channel: 0, 'scsi-id': 0, lun: 2, drive: 'disk1', product: 'scratch' });
  t.throws(() => blockdevOptions({ ...disks[0]!, name: 'a-name-of-seventeen' }, 0), { instanceOf: VmError, message: /1 to 16 letters/ });
  t.throws(() => blockdevOptions({ ...disks[0]!, name: 'two words' }, 0), { instanceOf: VmError });
  // the pc machine takes the PCI controller
  t.true(values(qemuArgs({ ...config, machine: 'pc' }), '-device').includes('virtio-scsi-pci,id=scsi'));
});

test('the kernel command line: no SCSI scan at boot; a snapshot loads the loop module a restored build may need', (t) => {
  t.regex(kernelCmdline(config), /(^| )scsi_mod\.scan=none( |$)/);
  t.regex(kernelCmdline(config), /dockvm\.load=mmio,serial( |$)/);
  t.regex(kernelCmdline({ ...config, snapshot: { path: '/m', role: 'save' } }), /dockvm\.load=mmio,serial,loop( |$)/);
});

const plan: BootPlan = {
  architecture: ARCHITECTURES.amd64,
  qemu: 'qemu-system-x86_64',
  accel: 'tcg',
  machine: 'microvm',
  transport: 'serial',
  memoryMiB: 512,
  cpus: 1,
  kernel: '/k/vmlinux',
  initrd: '/k/initrd.cpio',
  disks: [],
  network: false,
  timeoutMs: 30_000,
};
const context = {
  qemu: { path: 'qemu-system-x86_64', version: '7.2.22' },
  image: { path: '/k/vmlinux', protocol: 'pvh', kernelDigest: 'a'.repeat(64) } satisfies BootImage,
  initramfs: { path: '/k/initrd.cpio', hash: 'b'.repeat(64), modules: [], built: false } satisfies Initramfs,
};

test('a snapshot key changes with every setting the saved guest depends on, and with nothing per build', (t) => {
  const key = planSnapshotKey(plan, context);
  t.regex(key, /^[0-9a-f]{32}$/);
  // per build: disks, the deadline, another QEMU binary path of the same version
  t.is(planSnapshotKey({ ...plan, disks: [{ path: '/d/x.img', name: 'scratch' }], timeoutMs: 5000 }, { ...context, qemu: { ...context.qemu, path: '/tmp/wrapper' } }), key);
  const others = [
    planSnapshotKey({ ...plan, memoryMiB: 1024 }, context),
    planSnapshotKey({ ...plan, cpus: 2 }, context),
    planSnapshotKey({ ...plan, accel: 'kvm' }, context, 'the host CPU'),
    planSnapshotKey({ ...plan, machine: 'pc' }, context),
    planSnapshotKey({ ...plan, architecture: ARCHITECTURES.arm64, machine: 'virt' }, context),
    planSnapshotKey({ ...plan, network: true }, context),
    planSnapshotKey({ ...plan, extraCmdline: 'debug' }, context),
    planSnapshotKey({ ...plan, initrd: '/k/other.cpio' }, context),
    planSnapshotKey(plan, { ...context, qemu: { ...context.qemu, version: '8.2.0' } }),
    planSnapshotKey(plan, { ...context, image: { ...context.image, kernelDigest: 'c'.repeat(64) } }),
    planSnapshotKey(plan, { ...context, initramfs: { ...context.initramfs, hash: 'd'.repeat(64) } }),
  ];
  t.is(new Set([key, ...others]).size, others.length + 1);
  // under KVM the guest probed the host's CPU at boot: another CPU is another key
  t.not(planSnapshotKey({ ...plan, accel: 'kvm' }, context, 'cpu A'), planSnapshotKey({ ...plan, accel: 'kvm' }, context, 'cpu B'));
});
