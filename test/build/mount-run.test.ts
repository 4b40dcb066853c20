// dockvm shell -- CMD mounts and runs in one guest exec (the agent's mount-run): the command's own failure is
// its exit code and its stderr; a mount that fails is still dockvm's error, naming the mount step.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { withBuildVm } from '../../src/build/build-vm.js';
import { type Launch, commandLaunch, launchFailure, runStep } from '../../src/build/interpreter.js';
import { createUpperDisk } from '../../src/build/vm-layer.js';

test('a lower that is no filesystem fails the mount step, not the command; one VM: a command that fails is its own result', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-mount-run-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const scratch = join(dir, 'scratch.ext4');
  await createUpperDisk(scratch, 64);
  const junk = join(dir, 'junk.squashfs');
  writeFileSync(junk, Buffer.alloc(1024 * 1024, 0x5a));
  const { args } = runStep(['PATH=/bin'], commandLaunch(['/.dockvm/bash', '-c', 'echo out; echo err >&2; exit 9']));
  const failed = await withBuildVm({ lowers: [{ path: junk, fsType: 'squashfs' }], scratch }, { discard: true }, (vm) => vm.mountAndRun({ args })).then(
    () => undefined,
    (err: unknown) => err,
  );
  t.truthy(failed, 'the run did not succeed');
  t.regex((failed as Error).message, /^build VM step "mount" failed \(exit code \d+\): .*squashfs|lower/s);
  t.notRegex((failed as Error).message, /the mount step failed/, 'the marker line is not part of the message');

  // FROM scratch (no lower): the bundled bash runs the command; its failure is the result, not an error
  const result = await withBuildVm({ lowers: [], scratch }, { discard: true }, (vm) => vm.mountAndRun({ args }));
  t.is(result.exitCode, 9);
  t.is(result.stdout.toString(), 'out\n');
  t.is(result.stderr, 'err\n');
});

test('the launcher (vm/run-in-image.c): a missing first choice is passed over with no word, the chosen one\'s notice is said; the environment is exactly the one given; what cannot run is 127 or 126 and named', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-mount-run-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const scratch = join(dir, 'scratch.ext4');
  await createUpperDisk(scratch, 64);
  const launch = (alternatives: Launch['alternatives']) => runStep(['PATH=/bin', 'GREETING=hi'], { alternatives }).args;
  await withBuildVm({ lowers: [], scratch }, { discard: true }, async (vm) => {
    const chosen = await vm.mountAndRun({
      args: launch([
        { program: '/usr/bin/not-here', args: ['never'], notice: 'not this one' },
        { program: '/.dockvm/busybox', args: ['env'], notice: 'the bundled busybox' },
      ]),
    });
    t.is(chosen.exitCode, 0, chosen.stderr);
    t.is(chosen.stderr, 'the bundled busybox\n');
    // FROM scratch has no shell of its own: the bundled tools come after its PATH
    t.deepEqual(chosen.stdout.toString().split('\n').filter(Boolean), ['PATH=/bin:/.dockvm', 'GREETING=hi']);

    const missing = await vm.step('run', { args: launch([{ program: 'not-a-command', args: [] }]) });
    t.is(missing.exitCode, 127);
    t.deepEqual(launchFailure(missing.stderr), { program: 'not-a-command', exitCode: 127, execFormat: false });
    t.regex(missing.stderr, /^dockvm: not-a-command: not found$/m);

    const made = await vm.step('run', { args: launch([{ program: '/.dockvm/busybox', args: ['sh', '-c', 'echo x > /plain'] }]) });
    t.is(made.exitCode, 0, made.stderr);
    const notExecutable = await vm.step('run', { args: launch([{ program: '/plain', args: [] }]) });
    t.is(notExecutable.exitCode, 126);
    t.deepEqual(launchFailure(notExecutable.stderr), { program: '/plain', exitCode: 126, execFormat: false });
    t.regex(notExecutable.stderr, /^dockvm: \/plain: Permission denied$/m);
  });
});
