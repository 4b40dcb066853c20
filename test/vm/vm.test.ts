// One real VM (TCG here), shared by the tests in this file: commands, streams, exit statuses, files,
// disks. Each test asserts what a user of startVm() would check.
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import test from 'ava';
import { ScriptError, VmError } from '../../src/errors.js';
import { createScratchDisk } from '../../src/vm/disks.js';
import { qemuImgInfo } from '../../src/vm/qemu-img.js';
import { type Vm, startVm } from '../../src/vm/vm.js';
import type { ExecOptions } from '../../src/vm/agent-client.js';
import { oddChunks } from '../helpers/streams.js';
import { waitFor } from '../helpers/wait.js';

let vm: Vm;
let diskDir: string;

test.before(async () => {
  diskDir = await mkdtemp(join(tmpdir(), 'dockvm-vm-test-'));
  const scratch = join(diskDir, 'scratch.img');
  await createScratchDisk(scratch, 64);
  const readOnly = join(diskDir, 'ro.img');
  await createScratchDisk(readOnly, 16);
  vm = await startVm({ memoryMiB: 512, disks: [{ path: scratch, name: 'scratch' }, { path: readOnly, readOnly: true, name: 'lower' }] });
});

test.after.always(async () => {
  await vm?.shutdown();
  if (diskDir) await rm(diskDir, { recursive: true, force: true });
});

async function run(options: ExecOptions): Promise<{ exitCode: number | null; signal?: string; stdout: string; stderr: string }> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const status = await vm.exec({ ...options, onStdout: (c) => void out.push(c), onStderr: (c) => void err.push(c) });
  return { ...status, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() };
}

test.serial('the agent said hello with its protocol and the transport in use', (t) => {
  t.is(vm.hello?.protocol, 2);
  t.is(vm.hello?.transport, vm.transport);
  t.regex(vm.hello?.kernel ?? '', /^\d+\.\d+/);
  t.true(existsSync(vm.tempDir));
});

test.serial('stdout and stderr arrive separately; exit codes come back as they are', async (t) => {
  const r = await run({ argv: ['sh', '-c', 'echo out; echo err >&2; exit 7'] });
  t.deepEqual(r, { exitCode: 7, stdout: 'out\n', stderr: 'err\n' });
  t.is((await run({ argv: ['true'] })).exitCode, 0);
  t.is((await run({ argv: ['false'] })).exitCode, 1);
});

test.serial('env and cwd are the command\'s own; PATH from that env finds the program', async (t) => {
  const r = await run({ argv: ['sh', '-c', 'echo "$GREETING $PWD"; env | sort'], env: { GREETING: 'hi', PATH: '/bin' }, cwd: '/proc' });
  t.is(r.exitCode, 0);
  t.is(r.stdout.split('\n')[0], 'hi /proc');
  t.deepEqual(r.stdout.split('\n').slice(1).filter((l) => l && !l.startsWith('PWD=') && !l.startsWith('SHLVL=')), ['GREETING=hi', 'PATH=/bin']);
});

test.serial('a megabyte of stdin fed in odd chunks reaches the command intact', async (t) => {
  const input = Buffer.from(Buffer.alloc(1024 * 1024).map((_, i) => (i * 31 + (i >> 8)) % 256));
  const r = await run({ argv: ['sha256sum'], stdin: oddChunks(input, [1, 4099, 65537, 7, 300000]) });
  t.is(r.exitCode, 0);
  t.is(r.stdout.split(' ')[0], createHash('sha256').update(input).digest('hex'));
  t.is((await run({ argv: ['cat'], stdin: 'short\n' })).stdout, 'short\n');
  // a command that never reads its stdin still ends, and the sender does not stall
  t.is((await run({ argv: ['true'], stdin: Buffer.alloc(2 * 1024 * 1024) })).exitCode, 0);
});

test.serial('50 MB streamed out of the guest arrive whole (sha256 matches the guest\'s own)', async (t) => {
  const made = await run({ argv: ['sh', '-c', 'head -c 52428800 /dev/urandom > /tmp/big && sha256sum /tmp/big'] });
  t.is(made.exitCode, 0, made.stderr);
  const hash = createHash('sha256');
  let bytes = 0;
  const status = await vm.exec({
    argv: ['cat', '/tmp/big'],
    onStdout: async (chunk) => {
      hash.update(chunk);
      bytes += chunk.length;
      if (bytes % 7 === 0) await new Promise((r) => setImmediate(r)); // a consumer that is sometimes slow
    },
  });
  t.deepEqual(status, { exitCode: 0 });
  t.is(bytes, 52428800);
  t.is<string | undefined, string | undefined>(hash.digest('hex'), made.stdout.split(' ')[0]);
  await run({ argv: ['rm', '/tmp/big'] });
});

test.serial('a command killed by a signal reports the signal, and kill() reaches a running one', async (t) => {
  t.deepEqual(await vm.exec({ argv: ['sh', '-c', 'kill -9 $$'] }), { exitCode: null, signal: 'SIGKILL' });
  // signalled once it says it runs, not after a guess at how long starting takes
  const running = vm.spawn({ argv: ['sh', '-c', 'echo running; exec sleep 600'], onStdout: () => running.kill('SIGTERM') });
  t.deepEqual(await running.result, { exitCode: null, signal: 'SIGTERM' });
});

test.serial('a program that does not exist is a ScriptError naming it; the VM carries on', async (t) => {
  const err = await t.throwsAsync(vm.exec({ argv: ['no-such-program'] }), { instanceOf: ScriptError });
  t.regex(err!.message, /no-such-program.*No such file or directory/);
  const cwd = await t.throwsAsync(vm.exec({ argv: ['true'], cwd: '/no/such/dir' }), { instanceOf: ScriptError });
  t.regex(cwd!.message, /\/no\/such\/dir/);
  t.is((await run({ argv: ['echo', 'still here'] })).stdout, 'still here\n');
});

test.serial('with a tty the command sees a terminal of the asked size, and can be resized', async (t) => {
  const r = await run({ argv: ['sh', '-c', 'test -t 0 && test -t 1 && stty size; echo err >&2'], tty: { rows: 33, cols: 101 } });
  t.is(r.exitCode, 0);
  t.is(r.stdout.replace(/\r/g, ''), '33 101\nerr\n'); // stderr goes through the terminal too
  t.is(r.stderr, '');
  // Resized while it runs: once it says it is waiting, then its line, which frees it to print its size
  // (frames reach the agent in order, so the new size is in place before the line is).
  const chunks: Buffer[] = [];
  let waiting!: () => void;
  const isWaiting = new Promise<void>((resolve) => (waiting = resolve));
  async function* input() {
    await isWaiting;
    running.resize(50, 160);
    yield Buffer.from('go\n');
  }
  const running = vm.spawn({ argv: ['sh', '-c', 'echo waiting; read line; stty size'], tty: true, stdin: Readable.from(input()), onStdout: (c) => {
    chunks.push(c);
    if (Buffer.concat(chunks).includes('waiting')) waiting();
  } });
  t.deepEqual(await running.result, { exitCode: 0 });
  t.regex(Buffer.concat(chunks).toString(), /50 160/);
});

test.serial('putFile and getFile move small files both ways, with the mode asked for', async (t) => {
  const data = Buffer.from(Array.from({ length: 70000 }, (_, i) => i % 256));
  await vm.putFile('/tmp/moved', data, 0o750);
  t.true((await vm.getFile('/tmp/moved')).equals(data));
  t.is((await run({ argv: ['stat', '-c', '%a %s', '/tmp/moved'] })).stdout, '750 70000\n');
  t.regex((await vm.getFile('/proc/cmdline')).toString(), /dockvm\.transport=/); // /proc files report size 0
  await t.throwsAsync(vm.getFile('/no/such/file'), { instanceOf: VmError, message: /\/no\/such\/file: No such file or directory/ });
  await t.throwsAsync(vm.putFile('/no/such/dir/f', 'x'), { instanceOf: VmError, message: /\/no\/such\/dir\/f/ });
});

test.serial('disks: the scratch disk is ext4 owned by root and writable; the read-only one refuses writes', async (t) => {
  const r = await run({
    argv: ['sh', '-c', [
      'set -e',
      'for d in /sys/block/sd*; do read -r model < $d/device/model; echo "$model ro=$(cat $d/ro) $(cat $d/size)"; done | sort',
      'mkdir -p /mnt/s /mnt/r',
      'scratch=; lower=; for d in /sys/block/sd*; do read -r model < $d/device/model; eval "$model=/dev/${d##*/}"; done',
      'mount -t ext4 $scratch /mnt/s',
      'stat -c "%u:%g" /mnt/s',
      'echo hello > /mnt/s/file && cat /mnt/s/file',
      'if dd if=/dev/zero of=$lower count=1 2>/dev/null; then echo wrote; else echo refused; fi',
      'umount /mnt/s',
    ].join('\n')],
  });
  t.is(r.exitCode, 0, r.stderr);
  t.deepEqual(r.stdout.trim().split('\n'), [`lower ro=1 ${(16 * 1024 * 1024) / 512}`, `scratch ro=0 ${(64 * 1024 * 1024) / 512}`, '0:0', 'hello', 'refused']);
  const info = await qemuImgInfo(join(diskDir, 'scratch.img'));
  t.is(info.format, 'raw');
  t.is(info.virtualSize, 64 * 1024 * 1024);
  t.true(info.actualSize < info.virtualSize); // sparse
});

test.serial('without network asked for, the guest has only loopback', async (t) => {
  const r = await run({ argv: ['sh', '-c', 'ls /sys/class/net; ip -4 -o addr show dev lo | awk \'{print $4}\''] });
  t.deepEqual(r, { exitCode: 0, stdout: 'lo\n127.0.0.1/8\n', stderr: '' });
});

test.serial('consoleTail returns the guest console\'s last lines', async (t) => {
  await run({ argv: ['sh', '-c', 'echo dockvm-console-marker > /dev/console'] });
  // the console is QEMU's stdout, a channel of its own: the line arrives when it arrives
  t.true(await waitFor(() => vm.consoleTail(1)[0] === 'dockvm-console-marker'), vm.consoleTail(3).join(' | '));
});

// The CPU model is amd64's (src/vm/architectures.ts); an arm64 host's tests run arm64 guests.
(process.arch === 'x64' ? test.serial : test.serial.skip)('the guest\'s CPU: under TCG no K8 of revision C or later (no rep_good, which turns the kernel\'s copies into rep strings TCG runs slowly); under KVM the host\'s', async (t) => {
  const r = await run({ argv: ['sh', '-c', 'grep -m1 "^flags" /proc/cpuinfo; grep -m1 "^model[[:space:]]" /proc/cpuinfo'] });
  const model = /^model\s*: (\d+)$/m.exec(r.stdout)?.[1];
  if (vm.accel === 'kvm') {
    t.is(model, /^model\s*: (\d+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]);
    return;
  }
  t.regex(r.stdout, /^flags\s*:.* sse4_2 /m);
  t.notRegex(r.stdout, /\brep_good\b/);
  t.is(model, '2');
});

test.serial('a put over the size limit is refused on the host with a hint', async (t) => {
  await t.throwsAsync(vm.putFile('/tmp/huge', Buffer.alloc(16 * 1024 * 1024)), { instanceOf: VmError, message: /pass big data on a disk/ });
});

test.serial('shutdown powers the VM off: QEMU has exited, the temp dir is gone, further calls fail clearly', async (t) => {
  const pid = vm.pid!;
  await vm.shutdown();
  t.false(processAlive(pid));
  t.false(existsSync(vm.tempDir));
  // QEMU ended by itself when the guest powered off (exit code 0), not killed after the grace period
  await t.throwsAsync(vm.exec({ argv: ['true'] }), { instanceOf: VmError, message: /^the VM is stopped: QEMU exited with code 0$/ });
});

/** A live process (not a zombie waiting to be reaped). */
function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}
