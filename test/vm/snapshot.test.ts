// VMs restored from a snapshot, in a snapshot folder of this file's own: the first start boots and does
// its work while a second, disk-less VM is saved in the background; later ones restore (QEMU starts counted, not taken from dockvm's word); a restored VM is as isolated as
// a booted one (its own random numbers, nothing of another build's files) and reads the disks of its own
// build, which no saved guest ever saw; a damaged snapshot, and one QEMU refuses, fall back to a boot
// with a notice.
import { createHash } from 'node:crypto';
import { mkdtemp, open, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import { createScratchDisk } from '../../src/vm/disks.js';
import { type Vm, type VmOptions, snapshotsSaved, startVm } from '../../src/vm/vm.js';
import { qemuCounter } from '../helpers/qemu-counter.js';

let dir: string;

test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dockvm-snapshot-test-'));
});

test.after.always(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function sh(vm: Vm, script: string): Promise<string> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const status = await vm.exec({ argv: ['sh', '-c', script], onStdout: (c) => void out.push(c), onStderr: (c) => void err.push(c) });
  if (status.exitCode !== 0) throw new Error(`${script}: exit ${status.exitCode}: ${Buffer.concat(err).toString()}`);
  return Buffer.concat(out).toString();
}

/** An ext4 disk of `mib` MiB holding /id with `id` in it, made on the host. */
async function diskWith(name: string, mib: number, id: string): Promise<string> {
  const path = join(dir, `${name}.img`);
  await createScratchDisk(path, mib);
  const file = join(dir, `${name}.id`);
  await writeFile(file, `${id}\n`);
  await execa('debugfs', ['-w', '-R', `write ${file} id`, path], { env: { PATH: `${process.env.PATH}:/usr/sbin:/sbin` } });
  return path;
}

/** What a build reads in its guest: its disk's size and /id, whether another build's marker is there, 32 random bytes. */
const LOOK = [
  'echo "random=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d " \\n")"',
  'mkdir -p /mnt/d && mount -t ext4 /dev/sda /mnt/d',
  'echo "size=$(cat /sys/block/sda/size) id=$(cat /mnt/d/id) model=$(cat /sys/block/sda/device/model)"',
  'echo "markers=$(ls /tmp /mnt/d | grep -c marker || true)"',
  'touch /tmp/marker /mnt/d/marker',
].join('\n');

function options(env: NodeJS.ProcessEnv, snapshots: string, notices: string[], disk: string): VmOptions {
  return { env: { ...process.env, ...env, DOCKVM_SNAPSHOT_DIR: snapshots }, memoryMiB: 256, disks: [{ path: disk, name: 'build' }], onNotice: (line) => void notices.push(line) };
}

test.serial('the first start boots and works while a disk-less VM is saved in the background; the next ones restore; each has its own random numbers, disks and files', async (t) => {
  const qemu = await qemuCounter(t);
  const snapshots = join(dir, 'snapshots');
  const notices: string[] = [];
  const seen: string[] = [];
  for (const [i, mib] of [24, 40, 56].entries()) {
    const vm = await startVm(options(qemu.env, snapshots, notices, await diskWith(`build${i}`, mib, `build-${i}`)));
    try {
      t.is(vm.restored, i > 0, `start ${i} was ${i > 0 ? 'restored' : 'booted'}`);
      if (i === 0) {
        // the work's VM is there before any snapshot is: the save is not in front of it
        t.deepEqual((await readdir(snapshots).catch(() => [])).filter((name) => !name.startsWith('.')), [], 'no snapshot yet when the first VM is ready');
      }
      seen.push(await sh(vm, LOOK));
    } finally {
      await vm.shutdown();
    }
    if (i === 0) await snapshotsSaved();
  }
  t.is(qemu.boots(), 2, 'the first run\'s VM, and the disk-less one saved as the snapshot');
  t.is(qemu.saves(), 1);
  t.is(qemu.restores(), 2);
  t.is(qemu.vms(), 3);
  t.is(notices.length, 1, notices.join('\n'));
  t.regex(notices[0]!, /no snapshot of the VM for these settings yet: booting, and saving one in the background/);
  // each guest's disk is its own build's: the size and the file it was made with, none of them known when the snapshot was saved
  t.deepEqual(seen.map((text) => /size=(\d+) id=(\S+) model=(\S+)/.exec(text)!.slice(1)), [
    [`${24 * 2048}`, 'build-0', 'build'],
    [`${40 * 2048}`, 'build-1', 'build'],
    [`${56 * 2048}`, 'build-2', 'build'],
  ]);
  // nothing of the build before: no marker in the guest's /tmp or on the disk
  t.deepEqual(seen.map((text) => /markers=(\d+)/.exec(text)![1]), ['0', '0', '0']);
  // random numbers: three restores of one saved RNG state, three different streams
  const randoms = seen.map((text) => /random=([0-9a-f]{64})/.exec(text)![1]);
  t.is(new Set(randoms).size, 3, randoms.join(' '));
});

test.serial('a damaged snapshot is not used: a notice, a boot, and a new snapshot the next start restores', async (t) => {
  const qemu = await qemuCounter(t);
  const snapshots = join(dir, 'snapshots');
  const [key] = (await readdir(snapshots)).filter((name) => !name.startsWith('.'));
  const state = join(snapshots, key!, 'state');
  const bytes = await readFile(state);
  bytes[bytes.length - 100] = bytes[bytes.length - 100]! ^ 0xff;
  await writeFile(state, bytes);

  const notices: string[] = [];
  const vm = await startVm(options(qemu.env, snapshots, notices, await diskWith('damaged', 24, 'after-damage')));
  try {
    t.regex(await sh(vm, LOOK), /id=after-damage/);
  } finally {
    await vm.shutdown();
  }
  t.is(notices.length, 1, notices.join('\n'));
  t.regex(notices[0]!, /snapshot .* is not usable \(its device state does not match the digest it was saved with\); booting, and saving a new one in the background/);
  await snapshotsSaved();
  t.is(qemu.boots(), 2, 'the work\'s VM and the one saved');
  t.is(qemu.saves(), 1);
  t.is(qemu.restores(), 0);
  t.not((await readFile(state)).compare(bytes), 0, 'a new state was saved');
});

test.serial('a snapshot whose memory is damaged gives a guest that crashes: a notice, a boot, and the snapshot saved again', async (t) => {
  const qemu = await qemuCounter(t);
  const snapshots = join(dir, 'snapshots');
  const [key] = (await readdir(snapshots)).filter((name) => !name.startsWith('.'));
  // guest RAM from 16 MiB on (where the kernel is loaded) as zeros for 64 MiB: the checks pass (the memory
  // is not hashed), QEMU loads the state, and the guest dies as it resumes
  const memory = await open(join(snapshots, key!, 'memory'), 'r+');
  await memory.write(Buffer.alloc(64 * 1024 * 1024), 0, 64 * 1024 * 1024, 16 * 1024 * 1024);
  await memory.close();

  const notices: string[] = [];
  const vm = await startVm(options(qemu.env, snapshots, notices, await diskWith('crashed', 24, 'after-crash')));
  try {
    t.false(vm.restored);
    t.regex(await sh(vm, LOOK), /id=after-crash/);
  } finally {
    await vm.shutdown();
  }
  t.is(notices.length, 1, notices.join('\n'));
  t.regex(notices[0]!, /the VM restored from its snapshot did not answer \(.*\); booting instead, and the snapshot will be saved again/);
  t.is(qemu.restores(), 1);
  t.is(qemu.boots(), 1);
  t.deepEqual(await readdir(snapshots), [], 'the damaged snapshot is gone, and no refusal recorded');
});

test.serial('a snapshot QEMU refuses: a notice, a boot; later starts boot without trying it, and say so', async (t) => {
  const qemu = await qemuCounter(t);
  const snapshots = join(dir, 'snapshots');
  // one saved again first (the test before removed the damaged one)
  const first = await startVm(options(qemu.env, snapshots, [], await diskWith('saved-again', 24, 'saved-again')));
  await first.shutdown();
  await snapshotsSaved();
  const [key] = (await readdir(snapshots)).filter((name) => !name.startsWith('.'));
  // a state that passes dockvm's checks (its description describes it) but is no migration stream
  const description = JSON.parse(await readFile(join(snapshots, key!, 'snapshot.json'), 'utf8')) as Record<string, unknown>;
  const junk = Buffer.alloc(Number(description.stateBytes), 0x5a);
  await writeFile(join(snapshots, key!, 'state'), junk);
  await writeFile(join(snapshots, key!, 'snapshot.json'), JSON.stringify({ ...description, stateSha256: createHash('sha256').update(junk).digest('hex') }));

  const notices: string[] = [];
  for (const i of [0, 1]) {
    const vm = await startVm(options(qemu.env, snapshots, notices, await diskWith(`refused${i}`, 24, `refused-${i}`)));
    try {
      t.false(vm.restored);
      t.regex(await sh(vm, LOOK), new RegExp(`id=refused-${i}`));
    } finally {
      await vm.shutdown();
    }
  }
  t.is(qemu.restores(), 1, 'the refused one, once');
  t.is(qemu.boots(), 4, 'the first start and the snapshot saved beside it, then the two refused');
  t.is(notices.length, 2, notices.join('\n'));
  t.regex(notices[0]!, /QEMU could not restore the saved VM \(.*\); booting instead \(.*\.refused says so for later runs\)/);
  t.regex(notices[1]!, /booting the VM: QEMU refused its snapshot before \(.*\); remove .*\.refused to try again/);
  t.deepEqual(await readdir(snapshots), [`${key}.refused`]);
});
