// dockvm shell with real VM boots: a command over the Debian fixture runs as root in the image, its
// output streams through and its exit code is dockvm's; a shell reads a script from a piped stdin.
import test from 'ava';
import { execa } from 'execa';
import { debianFixture } from '../fixtures/debian.js';
import { runDockvm } from '../helpers/peers.js';

const BIN = new URL('../../bin/dockvm.js', import.meta.url).pathname;

test('shell -- CMD: root in the Debian image, stdout and stderr apart, its exit code', async (t) => {
  const run = await runDockvm(['shell', debianFixture(), '--', 'sh', '-c', 'id -u; cat /etc/debian_version; pwd; echo "HOME=$HOME"; echo oops >&2; exit 7']);
  t.is(run.exitCode, 7);
  t.regex(run.stdout, /^0\n12\.\d+\n\/\nHOME=\/root\n$/);
  t.true(run.stderr.includes('oops\n'), run.stderr);
  const json = await runDockvm(['shell', debianFixture(), '--json', '--', 'sh', '-c', 'echo out; echo err >&2; exit 5']);
  t.is(json.exitCode, 5);
  t.deepEqual(JSON.parse(json.stdout), { command: ['sh', '-c', 'echo out; echo err >&2; exit 5'], exitCode: 5, stdout: 'out\n', stderr: 'err\n' });
});

test('shell without a command reads a script from a piped stdin; changes do not touch the image', async (t) => {
  const script = 'touch /etc/changed && echo "piped $(id -un)"\nexit 4\n';
  const run = await execa(process.execPath, [BIN, 'shell', debianFixture()], { input: script, reject: false });
  t.is(run.exitCode, 4, run.stderr);
  t.is(run.stdout, 'piped root');
  const again = await runDockvm(['shell', debianFixture(), '--', 'test', '-e', '/etc/changed']);
  t.is(again.exitCode, 1, 'the next shell starts from the image again');
});

test('DOCKVM_CPUS gives the VM that many CPUs; a count that is not one is refused before any VM', async (t) => {
  const two = await runDockvm(['shell', debianFixture(), '--', 'nproc'], { env: { DOCKVM_CPUS: '2' } });
  t.is(two.exitCode, 0, two.stderr);
  t.is(two.stdout, '2\n');
  const bad = await runDockvm(['shell', debianFixture(), '--', 'nproc'], { env: { DOCKVM_CPUS: 'many' } });
  t.not(bad.exitCode, 0);
  t.is(bad.stdout, '');
  t.regex(bad.stderr, /^dockvm: DOCKVM_CPUS=many is not a number of virtual CPUs \(a whole number from 1 to 64\)$/m);
});
