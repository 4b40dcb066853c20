// The initramfs is deterministic and content-addressed; kernel modules come with their dependencies first.
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { VmError } from '../../src/errors.js';
import { writeCpio } from '../../src/vm/cpio.js';
import { ensureInitramfs } from '../../src/vm/initramfs.js';
import { resolveKernel } from '../../src/vm/kernel.js';
import { moduleDepends, planModules } from '../../src/vm/modules.js';
import { ARCHITECTURES, defaultArchitecture } from '../../src/vm/architectures.js';
import { elfFacts } from '../../src/vm/elf.js';

interface CpioRecord {
  name: string;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  rdev: [number, number];
  data: Buffer;
}

/** An independent newc reader, to check what the writer wrote. */
function readCpio(bytes: Buffer): CpioRecord[] {
  const records: CpioRecord[] = [];
  let at = 0;
  const align = (n: number): number => (n + 3) & ~3;
  for (;;) {
    const head = bytes.subarray(at, at + 110).toString('latin1');
    if (!head.startsWith('070701')) throw new Error(`bad magic at ${at}`);
    const field = (i: number): number => parseInt(head.slice(6 + i * 8, 14 + i * 8), 16);
    const nameSize = field(11);
    const size = field(6);
    const name = bytes.subarray(at + 110, at + 110 + nameSize - 1).toString('utf8');
    const dataAt = align(at + 110 + nameSize);
    if (name === 'TRAILER!!!') return records;
    records.push({ name, mode: field(1), uid: field(2), gid: field(3), mtime: field(5), rdev: [field(9), field(10)], data: bytes.subarray(dataAt, dataAt + size) });
    at = align(dataAt + size);
  }
}

test('cpio: entries sorted by path, owner 0:0, one mtime, symlink targets and device numbers kept', (t) => {
  const bytes = writeCpio([
    { path: 'bin/sh', type: 'symlink', target: '/bin/busybox' },
    { path: 'bin', type: 'dir', mode: 0o755 },
    { path: 'init', type: 'file', mode: 0o755, data: Buffer.from('#!/bin/sh\n') },
    { path: 'dev/console', type: 'chardev', mode: 0o600, major: 5, minor: 1 },
    { path: 'dev', type: 'dir', mode: 0o755 },
  ]);
  t.is(bytes.length % 4, 0);
  const records = readCpio(bytes);
  t.deepEqual(records.map((r) => r.name), ['bin', 'bin/sh', 'dev', 'dev/console', 'init']);
  t.true(records.every((r) => r.uid === 0 && r.gid === 0 && r.mtime === 0));
  t.is(records[1]!.mode, 0o120777);
  t.is(records[1]!.data.toString(), '/bin/busybox');
  t.is(records[3]!.mode, 0o020600);
  t.deepEqual(records[3]!.rdev, [5, 1]);
  t.is(records[4]!.data.toString(), '#!/bin/sh\n');
  t.throws(() => writeCpio([{ path: 'a', type: 'dir', mode: 0o755 }, { path: 'a', type: 'dir', mode: 0o755 }]), { message: /duplicate entry a/ });
});

test('modules: every dependency is loaded before the module that needs it; ext4 is built in', async (t) => {
  const kernel = await resolveKernel();
  t.not(kernel.modulesDir, null);
  const plan = await planModules(kernel.modulesDir!);
  const order = plan.load.map((m) => m.name);
  for (const m of plan.load) {
    for (const dep of moduleDepends(await readFile(m.path))) {
      if (order.includes(dep)) t.true(order.indexOf(dep) < order.indexOf(m.name), `${dep} before ${m.name}`);
    }
  }
  t.true(plan.builtin.includes('ext4'));
  const groupsOf = (name: string) => plan.load.find((m) => m.name === name)?.groups;
  t.deepEqual(groupsOf('virtio_net'), ['net']);
  t.deepEqual(groupsOf('loop'), ['loop'], 'loop devices only for a VM with a disk of several files');
  // virtio_ring is needed by every virtio driver, so by every group that loads one
  t.deepEqual([...groupsOf('virtio_ring')!].sort(), ['base', 'mmio', 'net', 'pci', 'serial', 'vsock']);
  await t.throwsAsync(planModules(kernel.modulesDir!, { no_such_module: 'base' }), { instanceOf: VmError, message: /kernel module no_such_module is neither built in nor under/ });
});

test('initramfs: the same inputs give the same bytes, found in the cache the second time; other inputs another file', async (t) => {
  const kernel = await resolveKernel();
  const caches = [await mkdtemp(join(tmpdir(), 'dockvm-initramfs-a-')), await mkdtemp(join(tmpdir(), 'dockvm-initramfs-b-'))];
  t.teardown(() => Promise.all(caches.map((dir) => rm(dir, { recursive: true, force: true }))));
  const [a, b] = await Promise.all(caches.map((dir) => ensureInitramfs({ kernel, env: { ...process.env, DOCKVM_CACHE: dir } })));
  t.true(a!.built && b!.built);
  t.is(a!.hash, b!.hash);
  const bytes = await readFile(a!.path);
  t.true(bytes.equals(await readFile(b!.path)));

  const before = await stat(a!.path);
  const again = await ensureInitramfs({ kernel, env: { ...process.env, DOCKVM_CACHE: caches[0]! } });
  t.false(again.built);
  t.is(again.path, a!.path);
  t.is((await stat(a!.path)).mtimeMs, before.mtimeMs);

  const records = readCpio(bytes);
  const names = records.map((r) => r.name);
  t.deepEqual(names, [...names].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y))));
  t.true(records.every((r) => r.uid === 0 && r.gid === 0 && r.mtime === 0));
  for (const name of ['init', 'bin/busybox', 'bin/dockvm-agent', 'bin/sh', 'dev/console', 'lib/modules/modules.load']) t.true(names.includes(name), name);
  const load = records.find((r) => r.name === 'lib/modules/modules.load')!.data.toString().trim().split('\n');
  t.deepEqual(load.map((line) => line.split(' ')[0]), a!.modules.map((m) => `${m}.ko`));
  for (const line of load) t.true(names.includes(`lib/modules/${line.split(' ')[0]}`), line);

  const fewer = await ensureInitramfs({ kernel, env: { ...process.env, DOCKVM_CACHE: caches[0]! }, modules: { overlay: 'base' } });
  t.not(fewer.path, a!.path);
  t.deepEqual(fewer.modules, ['overlay']);
});

test('initramfs per architecture: arm64\'s holds an aarch64 agent, busybox and bash, under a hash of its own; applets in /bin, /sbin and /usr/*bin linking there', async (t) => {
  const host = await ensureInitramfs({ kernel: await resolveKernel({ architecture: defaultArchitecture() }) });
  const arm64 = await ensureInitramfs({ kernel: await resolveKernel({ architecture: ARCHITECTURES.arm64 }) });
  t.not(arm64.hash, host.hash);
  for (const [initramfs, row] of [[host, defaultArchitecture()], [arm64, ARCHITECTURES.arm64]] as const) {
    const records = new Map(readCpio(await readFile(initramfs.path)).map((r) => [r.name, r]));
    for (const name of ['bin/dockvm-agent', 'usr/lib/dockvm/shell/busybox', 'usr/lib/dockvm/shell/bash', 'usr/lib/dockvm/tar']) {
      t.is(elfFacts(records.get(name)!.data)?.machine, row.elfMachine, `${row.architecture}: ${name}`);
    }
    t.is(records.get('bin/sh')!.data.toString(), 'busybox');
    t.is(records.get('bin/ip')!.data.toString(), 'busybox', 'an applet busybox puts in /sbin is in /bin too');
    t.deepEqual(['sbin', 'usr/bin', 'usr/sbin'].map((name) => [records.get(name)!.mode, records.get(name)!.data.toString()]), [
      [0o120777, 'bin'],
      [0o120777, '../bin'],
      [0o120777, '../bin'],
    ]);
    t.true(initramfs.modules.includes('virtio_mmio'), `${row.architecture}: the virtio-mmio transport is a module`);
  }
});
