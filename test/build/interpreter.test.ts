// Which interpreter runs what in the build VM (src/build/interpreter.ts): runAsRoot and extraCommands
// are bash scripts, as nixpkgs' manual says; a shebang picks another interpreter; `dockvm shell` runs
// the image's own programs and offers runAsRoot's bash. Real VM boots, each checking several things.
import test from 'ava';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { parseShebang, scriptLaunch } from '../../src/build/interpreter.js';
import { readTar } from '../../src/layer/tar.js';
import { openImage } from '../../src/transport/index.js';
import { debianBaseFixture } from '../fixtures/debian.js';
import { runDockvm } from '../helpers/peers.js';

const BIN = new URL('../../bin/dockvm.js', import.meta.url).pathname;
/** What a nixpkgs runAsRoot often starts with (`#!${pkgs.runtimeShell}`): a bash no image has. */
const NIX_SHEBANG = '#!/nix/store/00000000000000000000000000000000-bash-5.2-p15/bin/bash';

/**
 * nixpkgs' shadowSetup (pkgs/build-support/docker/default.nix), which its manual tells users to paste
 * into runAsRoot, with `${shadow}/bin` replaced by where these tests put shadow's tools and
 * `${runtimeShell}` by /bin/sh. It is written with `[[ ]]`.
 */
const SHADOW_SETUP = `export PATH=/usr/sbin:$PATH
mkdir -p /etc/pam.d
if [[ ! -f /etc/passwd ]]; then
  echo "root:x:0:0::/root:/bin/sh" > /etc/passwd
  echo "root:!x:::::::" > /etc/shadow
fi
if [[ ! -f /etc/group ]]; then
  echo "root:x:0:" > /etc/group
  echo "root:x::" > /etc/gshadow
fi
if [[ ! -f /etc/pam.d/other ]]; then
  cat > /etc/pam.d/other <<EOF
account sufficient pam_unix.so
auth sufficient pam_rootok.so
password requisite pam_unix.so nullok sha512
session required pam_unix.so
EOF
fi
if [[ ! -f /etc/login.defs ]]; then
  touch /etc/login.defs
fi
`;
/** The manual's example after it. */
const ADD_REDIS = 'groupadd -r redis\nuseradd -r -g redis redis\n';

/** Bash-isms a dash script fails on, each printing what a test checks. */
const BASHISMS = `if [[ -f /etc/passwd && $(id -u) == 0 ]]; then echo "double brackets: yes"; fi
arr=(a b c); echo "array: \${#arr[@]} \${arr[2]}"
echo "braces:" {x,y}
echo 'sourced=$1' > /tmp/lib.sh; source /tmp/lib.sh ok; rm /tmp/lib.sh; echo "source: $sourced"
echo "interpreter: $(readlink /proc/$$/exe)"
`;

test('shebang lines are read as Linux reads them; the host picks bash, a shebang interpreter, or bash for a missing shell', (t) => {
  t.deepEqual(parseShebang('#!/bin/sh\necho'), { interpreter: '/bin/sh' });
  t.deepEqual(parseShebang('#!  /usr/bin/env  bash -x \necho'), { interpreter: '/usr/bin/env', arg: 'bash -x' });
  t.is(parseShebang('echo #!/bin/sh'), undefined);
  t.is(parseShebang('#!\necho'), undefined);
  const programs = (script: string) => scriptLaunch(script).alternatives.map((a) => [a.program, ...a.args].join(' '));
  t.deepEqual(programs('echo hi'), ['/bin/bash -e /dev/pipes/runAsRoot', '/.dockvm/bash -e /dev/pipes/runAsRoot']);
  t.deepEqual(programs('#!/usr/bin/python3 -u\nprint(1)'), ['/usr/bin/python3 -u /dev/pipes/runAsRoot']);
  t.deepEqual(programs('#!/usr/bin/env bash\necho'), ['/usr/bin/env bash /dev/pipes/runAsRoot', '/bin/bash -e /dev/pipes/runAsRoot', '/.dockvm/bash -e /dev/pipes/runAsRoot']);
  t.regex(scriptLaunch(`${NIX_SHEBANG}\necho`).alternatives[2]!.notice!, /shebang names \/nix\/store\/.*\/bin\/bash, which the image lacks: running it with dockvm's bundled bash/);
  t.is(scriptLaunch('echo hi').script?.text, 'echo hi');
});

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-interpreter-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function writeSpec(dir: string, spec: Record<string, unknown>): string {
  const path = join(dir, 'spec.json');
  writeFileSync(path, JSON.stringify({ name: 'localhost/dockvm-test/interpreter', tag: 'v1', output: 'image.tar', ...spec }));
  return path;
}

/** The top layer's entries: path → the file's content (empty for other entries). */
async function topLayer(archive: string): Promise<Map<string, string>> {
  const image = await openImage(archive);
  try {
    const entries = new Map<string, string>();
    for await (const { entry, body } of readTar(await image.layers.at(-1)!.openTar(), { source: 'top layer' })) {
      const chunks: Buffer[] = [];
      for await (const chunk of body) chunks.push(chunk as Buffer);
      entries.set(entry.path, Buffer.concat(chunks).toString());
    }
    return entries;
  } finally {
    await image.close();
  }
}

test('over Debian: a nixpkgs runAsRoot (runtimeShell shebang, shadowSetup, useradd) runs with the image\'s bash, bash-isms work there and in extraCommands', async (t) => {
  const dir = tempDir(t);
  const spec = writeSpec(dir, {
    fromImage: debianBaseFixture(),
    runAsRoot: `${NIX_SHEBANG}\n${SHADOW_SETUP}${ADD_REDIS}${BASHISMS}`,
    extraCommands: 'if [[ -f etc/passwd ]]; then echo "extra double brackets: yes"; fi\nparts=(p q); echo "extra array: ${parts[1]}" {m,n}\n',
  });
  const run = await runDockvm(['run-as-root', spec]);
  t.is(run.exitCode, 0, run.stderr);
  t.regex(run.stderr, /^dockvm: runAsRoot's shebang names \/nix\/store\/\S+\/bin\/bash, which the image lacks: running it with the image's \/bin\/bash$/m);
  for (const line of ['double brackets: yes', 'array: 3 c', 'braces: x y', 'source: ok', 'interpreter: /usr/bin/bash', 'extra double brackets: yes', 'extra array: q m n']) {
    t.true(run.stderr.includes(`${line}\n`), `${line} in:\n${run.stderr}`);
  }
  const layer = await topLayer(join(dir, 'image.tar'));
  t.regex(layer.get('etc/group') ?? '', /^redis:x:\d+:$/m);
  t.regex(layer.get('etc/passwd') ?? '', /^redis:x:\d+:\d+:/m);
});

/** shadow's groupadd and useradd from the host with the libraries they load, as a copyToRoot directory. */
async function shadowTools(dir: string): Promise<string> {
  const root = join(dir, 'root');
  const copy = (path: string) => {
    mkdirSync(join(root, dirname(path)), { recursive: true });
    copyFileSync(path, join(root, path));
    chmodSync(join(root, path), 0o755);
  };
  for (const tool of ['/usr/sbin/groupadd', '/usr/sbin/useradd']) {
    copy(tool);
    const { stdout } = await execa('ldd', [tool]);
    for (const match of stdout.matchAll(/(\/\S+) \(0x/g)) copy(match[1]!);
  }
  return root;
}

test('FROM scratch: the same nixpkgs script runs with the bundled bash, busybox\'s tools after the image\'s, and neither leaves a trace', async (t) => {
  const dir = tempDir(t);
  await shadowTools(dir);
  const spec = writeSpec(dir, { copyToRoot: 'root', runAsRoot: `mkdir /tmp\n${SHADOW_SETUP}${ADD_REDIS}${BASHISMS}echo "path: $PATH"\n` });
  const run = await runDockvm(['run-as-root', spec]);
  t.is(run.exitCode, 0, run.stderr);
  for (const line of ['double brackets: yes', 'array: 3 c', 'braces: x y', 'source: ok', 'interpreter: /.dockvm/bash']) {
    t.true(run.stderr.includes(`${line}\n`), `${line} in:\n${run.stderr}`);
  }
  t.regex(run.stderr, /^path: \/usr\/sbin:.*:\/\.dockvm$/m, 'the bundled tools come last');
  const layer = await topLayer(join(dir, 'image.tar'));
  t.is(layer.get('etc/group'), 'root:x:0:\nredis:x:999:\n');
  t.regex(layer.get('etc/passwd') ?? '', /^root:x:0:0::\/root:\/bin\/sh\nredis:x:999:999:/);
  const tops = new Set([...layer.keys()].map((path) => path.split('/')[0]));
  t.deepEqual([...tops].sort(), ['etc', 'lib', 'lib64', 'tmp', 'usr'], 'nothing of /.dockvm, /dev/pipes or the mount points');
});

test('shell -- CMD runs the image\'s sh, found in its PATH, and the image\'s programs, not busybox applets', async (t) => {
  const run = await runDockvm(['shell', debianBaseFixture(), '--', 'sh', '-c', 'readlink /proc/$$/exe; date +%s%N; command -v date; echo "$PATH"']);
  t.is(run.exitCode, 0, run.stderr);
  t.regex(run.stdout, /^\/usr\/bin\/dash\n\d{19}\n\/usr\/bin\/date\n\/usr\/local\/sbin:\/usr\/local\/bin:\/usr\/sbin:\/usr\/bin:\/sbin:\/bin\n$/);
});

test('shell without a command is the bash a runAsRoot script gets: the image\'s', async (t) => {
  const run = await execa(process.execPath, [BIN, 'shell', debianBaseFixture()], { input: 'echo "bash $BASH_VERSION"; readlink /proc/$$/exe\n', reject: false });
  t.is(run.exitCode, 0, run.stderr);
  t.regex(run.stdout, /^bash 5\.\S+\n\/usr\/bin\/bash$/);
  t.notRegex(run.stderr, /bundled/);
});
