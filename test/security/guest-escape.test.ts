// Issue 13, from inside the guest: a RUN step is root in the VM (CAP_SYS_ADMIN, CAP_MKNOD in its
// namespaces; a RUN step keeps Docker's default capabilities: CAP_MKNOD, not CAP_SYS_ADMIN), so the chroot is no boundary. One build, one boot, no network: an innocent first step,
// then a hostile one that makes block devices of the VM's disks, mounts the scratch disk (or, without
// the capability to mount, finds the file's block with debugfs) and rewrites the first step's file in place (the bytes the host reads for the first step's layer), signals the
// agent, and leaves processes behind; a last step watches for them. What the host must keep: the first
// step's layer as that step made it (its cache entry is keyed by that step alone), the hostile step's
// changes in its own layer only, no guest process after the step, and no QEMU, passt or temp dir after
// the build.
import test from 'ava';
import { readdirSync } from 'node:fs';
import { errorLines, runDockvm } from '../helpers/peers.js';
import { qemuCounter } from '../helpers/qemu-counter.js';
import { BASE, alive, baseContext, buildDir, layers, tempRoot, text } from './helpers.js';

const escape = `#!/bin/bash
# each attack prints what it tried and what happened; none may stop the others
exec 2>&1
echo "network devices: $(ls /sys/class/net | tr '\\n' ' ')"
echo "processes seen: $(ls /proc | grep -c '^[0-9]')"
kill -KILL 1 2>/dev/null && echo "kill 1: sent" || echo "kill 1: refused"
mkdir -p /escape
# rewrite the first step's file in place: the blocks its manifest points at, same length
forge() { # DEVICE LABEL
  local f blocksize block
  if mount -t ext4 "$1" /escape/m 2>/dev/null; then
    echo "mount $2: mounted"
    for f in /escape/m/layers/*/first.txt; do
      [ -f "$f" ] && printf 'FORGED!!\\n' | dd of="$f" conv=notrunc status=none && sync && echo "rewrote $2:\${f#/escape/m/}"
    done
    umount /escape/m
    return
  fi
  # no CAP_SYS_ADMIN for a mount: the raw device is enough (debugfs reads where the file's block is)
  echo "mount $2: refused"
  blocksize=$(debugfs -R stats "$1" 2>/dev/null | sed -n 's/^Block size: *//p')
  for f in $(debugfs -R 'ls -p /layers' "$1" 2>/dev/null | cut -d/ -f6 | grep -E '^[0-9]+$'); do
    block=$(debugfs -R "blocks /layers/$f/first.txt" "$1" 2>/dev/null | tr -d ' ')
    [ -n "$block" ] && [ -n "$blocksize" ] || continue
    printf 'FORGED!!\\n' | dd of="$1" bs="$blocksize" seek="$block" conv=notrunc,fsync status=none && echo "rewrote $2:layers/$f/first.txt"
  done
}
mkdir -p /escape/m
for d in /sys/block/vd* /sys/block/sd*; do
  [ -e "$d/dev" ] || continue
  name=\${d##*/}; serial=$(cat $d/serial 2>/dev/null || cat $d/device/model 2>/dev/null); serial=\${serial%% *}; dev=$(cat $d/dev)
  if mknod /escape/$name b \${dev%:*} \${dev#*:}; then echo "mknod $serial: made"; else echo "mknod $serial: refused"; continue; fi
  [ "$serial" = scratch ] && forge /escape/$name "$serial"
done
# processes meant to outlive the step: a daemon, and a writer that keeps changing the next step's files
setsid bash -c 'while :; do date +%s%N >> /still-running.txt; sleep 0.5; done' </dev/null >/dev/null 2>&1 &
nohup sleep 100000 </dev/null >/dev/null 2>&1 &
sleep 1
echo "left behind: $(wc -l < /still-running.txt) lines written so far"
`;

test('a hostile RUN step makes block devices, rewrites an earlier layer on the scratch disk and leaves processes: the earlier layer is as its step made it, the processes die with the step, nothing is left on the host', async (t) => {
  const containerfile = [
    `FROM ${BASE}`,
    'RUN echo innocent > /first.txt',
    'COPY escape.sh /escape.sh',
    'RUN bash /escape.sh > /escape-report.txt',
    // no process of the step before may still be writing: the file stops growing
    'RUN a=$(wc -l < /still-running.txt); sleep 3; b=$(wc -l < /still-running.txt); echo "$a $b" > /after.txt; ls /proc | grep -c "^[0-9]" >> /after.txt',
    '',
  ].join('\n');
  const { ctx, out } = buildDir(t, containerfile, { 'escape.sh': escape });
  const qemu = await qemuCounter(t);
  const temp = tempRoot(t);
  const run = await runDockvm(['build', '--network=none', '--build-context', baseContext(), '-t', 'localhost/dockvm-test/escape:1', '-o', out, ctx], { env: { ...qemu.env, ...temp.env } });
  t.is(run.exitCode, 0, run.stderr);
  const all = await layers(out);
  const [first, , hostile, after] = all.slice(-4);
  const report = text(hostile, 'escape-report.txt') ?? '';
  t.log(report);
  // the attacks happened: otherwise this test proves nothing
  t.regex(report, /^network devices: lo $/m, '--network=none: the VM has no network device');
  t.regex(report, /^mknod scratch: made$/m);
  t.regex(report, /^rewrote scratch:layers\/0\/first\.txt$/m, 'the hostile step rewrote the first step\'s file on the scratch disk');
  t.regex(report, /^left behind: [1-9]\d* lines/m);
  // what the host kept
  t.is(text(first, 'first.txt'), 'innocent\n', 'the first step\'s layer holds what that step wrote');
  t.deepEqual([...first!.keys()].sort(), ['first.txt']);
  t.false(hostile!.has('first.txt'), 'the hostile step\'s layer does not carry the rewrite either (it happened below its overlay)');
  const [counts, processes] = (text(after, 'after.txt') ?? '').trim().split('\n');
  const [before, later] = counts!.split(' ').map(Number);
  t.is(later, before, 'nothing of the hostile step still runs in the next');
  t.is(processes, '3', 'the next step sees only its own processes (its shell, ls, grep)');
  t.is(qemu.vms(), 1);
  t.false(qemu.starts().some(({ pid }) => alive(pid)), 'no QEMU left');
  t.deepEqual(await temp.processes(), [], 'no process of this build left');
  t.deepEqual(temp.left(), [], 'no temp dir left');
});

test('a RUN step that crashes the guest kernel (and so its agent): one error naming the step, nothing written, nothing left', async (t) => {
  const { dir, ctx, out } = buildDir(t, `FROM ${BASE}\nRUN echo fine > /fine.txt\nRUN echo c > /proc/sysrq-trigger\nRUN echo never\n`);
  const qemu = await qemuCounter(t);
  const temp = tempRoot(t);
  const run = await runDockvm(['build', '--network=none', '--build-context', baseContext(), '-t', 'localhost/dockvm-test/crash:1', '-o', out, ctx], { env: { ...qemu.env, ...temp.env } });
  t.is(run.exitCode, 1, run.stderr);
  const errors = errorLines(run.stderr);
  t.is(errors.length, 1, run.stderr);
  t.regex(errors[0]!, /Containerfile:3: RUN echo c > \/proc\/sysrq-trigger: .*(VM|agent)/);
  t.deepEqual(readdirSync(dir), ['ctx'], 'no output');
  t.is(qemu.vms(), 1);
  t.false(qemu.starts().some(({ pid }) => alive(pid)), 'no QEMU left');
  t.deepEqual(await temp.processes(), [], 'no process of this build left');
  t.deepEqual(temp.left(), [], 'no temp dir left');
});
