// Issue 13, from the inputs: a --secret is in the guest only for the RUN steps that mount it, and gone
// from the guest's memory-backed files after them (it was never on a disk). A RUN step before the ones
// that mount it and one after them hunt for its value as a hostile step would (test/security/hunt.pl):
// out of their chroot, every file of the guest's tmpfs mounts (/run, /tmp, the step's own /dev/shm and
// /dev), of the scratch disk's file system, and the VM's disks read raw through block devices they make.
// A canary, written into an earlier step's layer, shows that the hunt finds what is there.
import test from 'ava';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runDockvm } from '../helpers/peers.js';
import { qemuCounter } from '../helpers/qemu-counter.js';
import { BASE, baseContext, buildDir, layers, tempRoot, text } from './helpers.js';

const HUNT = readFileSync(fileURLToPath(new URL('./hunt.pl', import.meta.url)));
// each value in two parts: neither the Containerfile nor a command line holds it whole
const SECRET = ['dockvm-secret-', '4c8e1b7d29-hunted'] as const;
const CANARY = ['dockvm-canary-', '93d0f6a1e5-hunted'] as const;
const hunt = (report: string) => `RUN perl /hunt.pl secret ${SECRET.join(' ')} canary ${CANARY.join(' ')} > ${report}`;

test('a --secret is in the guest only for the RUN steps that mount it: a step before them and one after find it in no file, tmpfs or raw disk of the VM', async (t) => {
  const containerfile = [
    `FROM ${BASE}`,
    `RUN echo '${CANARY[0]}''${CANARY[1]}' > /canary.txt`,
    'COPY hunt.pl /hunt.pl',
    hunt('/hunt-before.txt'),
    `RUN --mount=type=secret,id=token test "$(cat /run/secrets/token)" = '${SECRET[0]}''${SECRET[1]}' && echo saw-the-file > /proof.txt`,
    `RUN --mount=type=secret,id=token,env=TOKEN sh -c 'test "$TOKEN" = "${SECRET[0]}""${SECRET[1]}"' && echo saw-the-variable >> /proof.txt`,
    hunt('/hunt-after.txt'),
    '',
  ].join('\n');
  const d = buildDir(t, containerfile, { 'hunt.pl': HUNT });
  const secretFile = join(d.dir, 'token');
  writeFileSync(secretFile, SECRET.join(''));
  const qemu = await qemuCounter(t);
  const temp = tempRoot(t);
  const run = await runDockvm(['build', '--network=none', '--secret', `id=token,src=${secretFile}`, '--build-context', baseContext(), '-t', 'localhost/dockvm-test/hunt:1', '-o', d.out, d.ctx], {
    env: { ...qemu.env, ...temp.env },
  });
  t.is(run.exitCode, 0, run.stderr);
  const all = await layers(d.out);
  const [, , before, mountsFile, mountsEnv, after] = all.slice(-6);
  t.is(text(mountsFile, 'proof.txt'), 'saw-the-file\n', 'the step that mounts it as a file reads it');
  t.is(text(mountsEnv, 'proof.txt'), 'saw-the-file\nsaw-the-variable\n', 'the step that takes it as a variable has it');
  for (const [when, layer, report] of [['before', before, 'hunt-before.txt'], ['after', after, 'hunt-after.txt']] as const) {
    const found = text(layer, report) ?? '';
    t.log(`${when}:\n${found}`);
    // the hunt read what it claims: the disks raw, the tmpfs mounts, the scratch disk's files
    t.regex(found, /^disk scratch: read [1-9]\d* MiB of 8192 MiB \(its used blocks\)$/m);
    t.regex(found, /^disk out: read [1-9]\d* MiB/m);
    for (const mount of ['/run (tmpfs)', '/tmp (tmpfs)', '/build/scratch (ext4)', '/build/root/dev (tmpfs)', '/build/root/dev/shm (tmpfs)']) t.true(found.includes(`walked ${mount}\n`), `${when}: walked ${mount}`);
    // and finds what is there: the canary, in the first step's layer on the scratch disk
    t.regex(found, /^found canary at disk scratch$/m, `${when}: the raw scan finds the canary`);
    t.regex(found, /^found canary at file \/build\/scratch\/layers\/0\/canary\.txt$/m, `${when}: the file walk finds the canary`);
    t.deepEqual(found.split('\n').filter((line) => line.startsWith('found secret')), [], `${when} the steps that mount it: the secret is nowhere`);
  }
  t.is(qemu.vms(), 1);
  t.deepEqual(temp.left(), []);
});
