// The bytes of run-as-root's output do not move: two specs FROM scratch (so nothing depends on how this
// machine's Debian fixture was made), one built in the VM (copyToRoot, runAsRoot, extraCommands, config,
// env) and one on the host (no runAsRoot), give the config digest, derived tag and layer that dockvm gave
// for them before run-as-root became a plan the executor runs (recorded with main at d3390c5, whose
// run-as-root had its own VM pipeline). A deliberate change of the layer format bumps LAYER_FORMAT_VERSION
// (src/layer/format-version.ts), and these values are recorded again, saying why, in the same commit.
import test from 'ava';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runDockvm } from '../helpers/peers.js';

interface Result {
  configDigest: string;
  imageTag: string;
  layers: { diffId: string }[];
  bootedVm: boolean;
}

/** copyToRoot's files, every mode set (the umask does not reach them); their mtimes are clamped to `created`. */
function writeRoot(dir: string): string {
  const root = join(dir, 'root');
  for (const sub of ['opt', 'opt/seed', 'etc']) {
    mkdirSync(join(root, sub), { recursive: true });
    chmodSync(join(root, sub), 0o755);
  }
  chmodSync(root, 0o755);
  writeFileSync(join(root, 'opt/seed/kept'), 'kept\n');
  chmodSync(join(root, 'opt/seed/kept'), 0o644);
  writeFileSync(join(root, 'opt/seed/removed'), 'removed by the script\n');
  chmodSync(join(root, 'opt/seed/removed'), 0o600);
  writeFileSync(join(root, 'etc/app.conf'), 'conf=1\n');
  chmodSync(join(root, 'etc/app.conf'), 0o644);
  return root;
}

async function build(t: { is(a: unknown, b: unknown, m?: string): void; teardown(fn: () => void): void }, spec: Record<string, unknown>): Promise<Result> {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-pinned-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeRoot(dir);
  const path = join(dir, 'spec.json');
  writeFileSync(path, JSON.stringify({ ...spec, copyToRoot: 'root', output: 'image.tar' }));
  // the build cache is off for this file (package.json's ava config): the VM really builds the layer
  const run = await runDockvm(['run-as-root', path, '--json']);
  t.is(run.exitCode, 0, run.stderr);
  return JSON.parse(run.stdout) as Result;
}

const SCRIPT = [
  'mkdir -p /srv/app',
  "printf 'hello\\n' > /srv/app/greeting",
  'chmod 0640 /srv/app/greeting',
  'ln -s greeting /srv/app/link',
  'mkfifo /srv/app/fifo',
  'rm /opt/seed/removed',
  'echo "X=$X A=$A" > /srv/app/env',
].join('\n');

test('in the VM: the config digest, tag and layer run-as-root gave before it was a plan', async (t) => {
  const result = await build(t, {
    name: 'localhost/dockvm-test/pinned',
    runAsRoot: SCRIPT,
    extraCommands: 'echo extra > srv/extra',
    config: { Env: ['A=1'], Cmd: ['/bin/sh'], Labels: { k: 'v' } },
    env: { X: '1' },
  });
  t.true(result.bootedVm);
  t.deepEqual(
    { configDigest: result.configDigest, imageTag: result.imageTag, diffIds: result.layers.map((l) => l.diffId) },
    {
      configDigest: 'sha256:575767f426347a0b3e83e6c22fc535c78b006a85a926164eb609d62f164728a5',
      imageTag: '575767f426347a0b3e83e6c22fc535c7',
      diffIds: ['sha256:fdd223bee0a18cef7ccdc0b53666103ca537b6b914bb67a932f7082403cf91d6'],
    },
  );
});

test('on the host (no runAsRoot): the config digest, tag and layer run-as-root gave before it was a plan', async (t) => {
  const result = await build(t, {
    name: 'localhost/dockvm-test/pinned-host',
    tag: 'v1',
    extraCommands: 'chmod 0640 etc/app.conf && echo extra > extra',
    uid: 5,
    gid: 6,
    created: '2024-01-02T03:04:05Z',
  });
  t.false(result.bootedVm);
  t.deepEqual(
    { configDigest: result.configDigest, imageTag: result.imageTag, diffIds: result.layers.map((l) => l.diffId) },
    {
      configDigest: 'sha256:85c5a71a1717c427276ed876f0a10ce3e2b07dc39546e1fc957c1f4c0b9b70b1',
      imageTag: 'v1',
      diffIds: ['sha256:50055f9144284139a16e5b7158528cc53334e5e54849a583fef5a0408e82915b'],
    },
  );
});
