// Issue 13, QEMU's own confinement, on every architecture and machine dockvm boots: QEMU runs under its
// seccomp sandbox (no spawning, no privilege gain, no obsolete syscalls, no resource-limit changes), has
// no host directory to share (no 9p, no virtiofs, no SMB), no inbound port forwarding, and writes only the
// disks the build gave it. A real boot with these arguments: network.test.ts (its QEMU's argv is checked
// there) and every other VM test.
import test from 'ava';
import { ARCHITECTURES, ARCHITECTURE_NAMES } from '../../src/vm/architectures.js';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MissingToolError } from '../../src/errors.js';
import { networkBackend, passtArgs, startPasst } from '../../src/vm/network.js';
import { type QemuConfig, blockdevOptions, qemuArgs } from '../../src/vm/qemu.js';

const SANDBOX = 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny';

function values(args: string[], flag: string): string[] {
  return args.flatMap((arg, i) => (arg === flag ? [args[i + 1]!] : []));
}

for (const name of ARCHITECTURE_NAMES) {
  const architecture = ARCHITECTURES[name];
  for (const machine of Object.keys(architecture.machines)) {
    for (const networkSocket of [undefined, '/run/dockvm-vm-x/net.sock']) {
      const config: QemuConfig = {
        architecture, accel: 'tcg', machine, memoryMiB: 512, cpus: 1, kernel: '/k/vmlinuz', initrd: '/k/initrd',
        disks: [
          { path: '/d/lower0.sqfs', readOnly: true, name: 'lower0', format: 'raw' },
          { path: '/d/scratch.ext4', readOnly: false, name: 'scratch', format: 'raw' },
        ],
        network: true, ...(networkSocket ? { networkSocket } : {}),
        agent: { transport: 'serial', socketPath: '/run/agent.sock' },
        qmpSocketPath: '/run/qmp.sock',
      };
      const label = `${name} on ${machine}, network ${networkSocket ? 'through passt' : 'QEMU user (DOCKVM_HOST_LOOPBACK=1)'}`;

      test(`${label}: -sandbox on with spawn, privileges, obsolete syscalls and rlimits denied`, (t) => {
        t.deepEqual(values(qemuArgs(config), '-sandbox'), [SANDBOX]);
      });

      test(`${label}: no host share, no port forwarding, writable only the build's own disks`, (t) => {
        const args = qemuArgs(config);
        const line = args.join(' ');
        for (const share of ['-virtfs', '-fsdev', 'virtio-9p', 'vhost-user-fs', 'smb=', 'hostfwd', 'guestfwd', 'tftp=']) t.false(line.includes(share), share);
        // the disks are attached over QMP once the guest runs (blockdev-add), none on the command line
        t.deepEqual([...values(args, '-drive'), ...values(args, '-blockdev')], []);
        const attached = config.disks.map((disk, i) => blockdevOptions(disk, i));
        t.deepEqual(attached.filter((o) => o['read-only'] !== true).map((o) => (o.file as { filename: string }).filename), ['/d/scratch.ext4']);
        t.deepEqual(values(args, '-netdev'), [networkSocket ? `stream,id=net0,server=off,addr.type=unix,addr.path=${networkSocket}` : 'user,id=net0']);
      });
    }
  }
}

test("passt: the gateway is not the host's loopback, nothing forwarded inward, IPv4 only, as the caller's user", (t) => {
  const args = passtArgs('/run/net.sock', 1000, 1000);
  t.true(args.includes('--no-map-gw'));
  t.deepEqual(values(args, '--tcp-ports'), ['none']);
  t.deepEqual(values(args, '--udp-ports'), ['none']);
  t.true(args.includes('--ipv4-only'));
  // DNS asked of 10.0.2.3 is forwarded to the host's resolver; `--dns` would make 10.0.2.3 that resolver (a loop)
  t.deepEqual(values(args, '--dns-forward'), ['10.0.2.3']);
  t.false(args.includes('--dns'));
  t.deepEqual(values(args, '--runas'), ['1000:1000']);
  t.deepEqual(values(args, '--socket'), ['/run/net.sock']);
});

test.serial('without passt, a VM with network is refused with what to install and how to open the loopback instead', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-security-nopasst-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = process.env.PATH;
  process.env.PATH = dir; // spawn looks passt up on the PATH of the moment: an empty directory
  try {
    await t.throwsAsync(startPasst(dir, () => {}), {
      instanceOf: MissingToolError,
      message: "the build VM's network needs passt, which keeps the host's loopback out of its reach: install passt (apt-get install passt), or set DOCKVM_HOST_LOOPBACK=1 to use QEMU's user networking, which lets the build reach services on 127.0.0.1",
    });
  } finally {
    process.env.PATH = path;
  }
  t.deepEqual(readdirSync(dir), [], 'no socket left');
});

test('DOCKVM_HOST_LOOPBACK: 1 opens the loopback (QEMU\'s user networking), unset or 0 keeps passt, anything else is refused', (t) => {
  t.is(networkBackend({}), 'passt');
  t.is(networkBackend({ DOCKVM_HOST_LOOPBACK: '0' }), 'passt');
  t.is(networkBackend({ DOCKVM_HOST_LOOPBACK: '1' }), 'slirp');
  t.throws(() => networkBackend({ DOCKVM_HOST_LOOPBACK: 'yes' }), { message: 'DOCKVM_HOST_LOOPBACK=yes is not 0 or 1' });
});
