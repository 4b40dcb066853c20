// dockvm shell's upper is a scratch disk like a build's, not guest memory: a script that writes more
// than the VM's memory holds works in shell as it does in run-as-root (issue 18: a tmpfs upper stopped
// a 300 MB dd at about 235 MB).
import test from 'ava';
import { debianFixture } from '../fixtures/debian.js';
import { runDockvm } from '../helpers/peers.js';

test('shell -- CMD can write 600 MB into the image, more than the VM\'s 512 MiB of memory', async (t) => {
  const run = await runDockvm(['shell', debianFixture(), '--', 'sh', '-c', 'dd if=/dev/zero of=/big bs=1M count=600 status=none && stat -c %s /big']);
  t.is(run.exitCode, 0, run.stderr);
  t.is(run.stdout.split('\n')[0], String(600 * 2 ** 20));
});
