// Issue 13, from inside the guest: a RUN step is root in the VM (CAP_SYS_ADMIN, CAP_MKNOD in its
// namespaces), so the chroot is no boundary. One build, one boot, no network: an innocent first step,
// then a hostile one that makes block devices of the VM's disks, mounts the scratch disk and rewrites
// the first step's file in place (the bytes the host reads for the first step's layer), signals the
// agent, and leaves processes behind; a last step watches for them. What the host must keep: the first
// step's layer as that step made it (its cache entry is keyed by that step alone), the hostile step's
// changes in its own layer only, no guest process after the step, and no QEMU, passt or temp dir after
// the build.
import test from 'ava';
import { readdirSync } from 'node:fs';
import { runDockvm } from '../helpers/peers.js';
import { qemuCounter } from '../helpers/qemu-counter.js';
import { BASE, alive, baseContext, buildDir, layers, tempRoot, text } from './helpers.js';

const escape = `#!/bin/bash
# each attack prints what it tried and what happened; none may stop the others
exec 2>&1
echo "network devices: $(ls /sys/class/net | tr '\\n' ' ')"
echo "processes seen: $(ls /proc | grep -c '^[0-9]')"
kill -KILL 1 2>/dev/null && echo "kill 1: sent" || echo "kill 1: refused"
mkdir -p /escape
for d in /sys/block/vd*; do
  name=\${d##*/}; serial=$(cat $d/serial); dev=$(cat $d/dev)
  if mknod /escape/$name b \${dev%:*} \${dev#*:}; then echo "mknod $serial: made"; else echo "mknod $serial: refused"; continue; fi
  mkdir -p /escape/m-$name
  if mount -t ext4 /escape/$name /escape/m-$name 2>/dev/null; then
    echo "mount $serial: mounted"
    for f in /escape/m-$name/layers/*/first.txt; do
      [ -f "$f" ] || continue
      # same length, in place: the blocks the first step's manifest points at
      printf 'FORGED!!\\n' | dd of="$f" conv=notrunc status=none && sync && echo "rewrote $serial:\${f#/escape/m-$name/}"
    done
    umount /escape/m-$name
  fi
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
  t.is(qemu.boots(), 1);
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
  const errors = run.stderr.split('\n').filter((line) => line.startsWith('dockvm: '));
  t.is(errors.length, 1, run.stderr);
  t.regex(errors[0]!, /Containerfile:3: RUN echo c > \/proc\/sysrq-trigger: .*(VM|agent)/);
  t.deepEqual(readdirSync(dir), ['ctx'], 'no output');
  t.is(qemu.boots(), 1);
  t.false(qemu.starts().some(({ pid }) => alive(pid)), 'no QEMU left');
  t.deepEqual(await temp.processes(), [], 'no process of this build left');
  t.deepEqual(temp.left(), [], 'no temp dir left');
});
