// Issue 13, a poisoned --cache-from entry: whoever can push to the cache repository points the tag of one
// step's key at another step's entry (every blob and digest right, the content for another key). The
// build must not use it for the wrong step: it runs that step itself and says so; entries that are
// right are still verified like any blob. Two builds, one boot each.
import test from 'ava';
import { execa } from 'execa';
import { hasTool, runDockvm } from '../helpers/peers.js';
import { qemuCounter } from '../helpers/qemu-counter.js';
import { startRegistry } from '../helpers/registry.js';
import { BASE, baseContext, buildDir, layers, tempRoot, text } from './helpers.js';

interface Result {
  steps: { name: string; key: string; cache: string | null }[];
  vmBoots: number;
}

const ready = hasTool('skopeo') && hasTool('docker-registry');
(ready ? test : test.skip)(`a --cache-from tag pointed at another step's entry is not used for this step; the step is built, the warning names the tag${ready ? '' : ' (skipped: needs skopeo and docker-registry)'}`, async (t) => {
  const { host } = await startRegistry(t);
  const repo = `docker://${host}/dockvm/shared-cache`;
  const { dir, ctx } = buildDir(t, `FROM ${BASE}\nRUN echo honest > /a.txt\nRUN echo second > /b.txt\n`);
  const qemu = await qemuCounter(t);
  const temp = tempRoot(t);
  const build = async (name: string, args: string[]) => {
    const run = await runDockvm(['build', '--json', '--network=none', '--build-context', baseContext(), '-t', 'localhost/dockvm-test/poison:1', '-o', `${dir}/${name}.tar`, ...args, ctx], {
      env: { ...qemu.env, ...temp.env, DOCKVM_BUILD_CACHE: 'on', DOCKVM_BUILD_CACHE_DIR: `${dir}/cache-${name}` },
    });
    t.is(run.exitCode, 0, run.stderr);
    return { result: JSON.parse(run.stdout) as Result, stderr: run.stderr, archive: `${dir}/${name}.tar` };
  };

  const first = await build('pusher', ['--cache-to', repo]);
  const [honest, second] = first.result.steps.map((step) => step.key.replace(/^sha256:/, ''));
  // the attacker: the tag of the first step's key now holds the second step's (valid) entry
  await execa('skopeo', ['copy', '--src-tls-verify=false', '--dest-tls-verify=false', `${repo}:${second}`, `${repo}:${honest}`]);

  const victim = await build('victim', ['--cache-from', repo]);
  t.is(victim.result.steps[0]!.cache, null, 'the poisoned step is built, not taken from the cache');
  t.regex(victim.stderr, new RegExp(`the build cache entry ${repo.replace(/[.]/g, '\\.')}:${honest} is for another step: its config names key sha256:${second}, not sha256:${honest}; it was not used`));
  const top = (await layers(victim.archive)).slice(-2);
  t.is(text(top[0], 'a.txt'), 'honest\n', 'the first step\'s layer is its own');
  t.false(top[0]!.has('b.txt'), 'and not the other step\'s');
  t.is(text(top[1], 'b.txt'), 'second\n');
  t.is(qemu.boots(), 2, 'one boot a build: the victim built the poisoned step');
  t.deepEqual(temp.left(), []);
});
