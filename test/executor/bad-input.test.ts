// dockvm build's bad input (issue 10): one clear error naming the thing, exit 1 (2 for usage), nothing
// written, no QEMU left running. Only the failing RUN boots a VM; its QEMU must be gone afterwards.
import test from 'ava';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEBIAN_BASE_REPO_TAG, debianBaseFixture } from '../fixtures/debian.js';
import { errorLines, runDockvm } from '../helpers/peers.js';
import { qemuCounter } from '../helpers/qemu-counter.js';

const base = () => `${DEBIAN_BASE_REPO_TAG}=docker-archive:${debianBaseFixture()}`;

function context(t: { teardown(fn: () => void): void }, containerfile: string, files: Record<string, string> = {}): string {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-build-bad-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'ctx'));
  writeFileSync(join(dir, 'ctx', 'Containerfile'), containerfile);
  for (const [name, data] of Object.entries(files)) writeFileSync(join(dir, name), data);
  return dir;
}

/** Whether a process is still there. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const cases: [title: string, containerfile: string, error: RegExp, args?: string[]][] = [
  ['a missing stage', `FROM ${DEBIAN_BASE_REPO_TAG} AS build\nRUN true\nFROM ${DEBIAN_BASE_REPO_TAG}\nCOPY --from=biuld /x /x\n`, /Containerfile:4: .*--from=biuld: no stage is named "biuld" \(did you mean "build"\?/],
  ['a COPY outside the context', `FROM ${DEBIAN_BASE_REPO_TAG}\nCOPY ../secret.txt /x\n`, /Containerfile:2: .*"\.\.\/secret\.txt" is outside the build context/],
  ['an ARG used in FROM without a value', `ARG BASE\nFROM $BASE\nRUN true\n`, /Containerfile:2: .*\$BASE in "\$BASE" has no value: declare it with a default before the first FROM \(ARG BASE=…\) or pass --build-arg BASE=…/],
  ['an unknown instruction', `FROM ${DEBIAN_BASE_REPO_TAG}\nRUNN true\n`, /Containerfile:2:1: unknown instruction: RUNN \(one of FROM, RUN/],
  [
    'a base of another platform than the one asked for',
    `FROM ${DEBIAN_BASE_REPO_TAG}\nRUN true\n`,
    /^dockvm: docker-archive:\S+debian-base\.tar is an image for linux\/amd64, not linux\/arm64$/m,
    ['--platform', 'linux/arm64'],
  ],
  [
    'a platform dockvm has no build VM for',
    'FROM scratch\nRUN true\n',
    /Containerfile:2: RUN true: building linux\/riscv64 steps \(dockvm has build VMs for linux\/amd64, linux\/arm64\/v8\) is not supported yet by dockvm build/,
    ['--platform', 'linux/riscv64'],
  ],
];

for (const [title, containerfile, error, args = []] of cases) {
  test(`${title}: one error naming it, exit 1, nothing written, no VM`, async (t) => {
    const dir = context(t, containerfile, { 'secret.txt': 'outside\n' });
    const qemu = await qemuCounter(t);
    const out = join(dir, 'out.tar');
    const run = await runDockvm(['build', '--build-context', base(), '-t', 'localhost/dockvm-test/bad:1', '-o', out, ...args, join(dir, 'ctx')], { env: qemu.env });
    t.is(run.exitCode, 1, run.stderr);
    t.regex(run.stderr, error);
    t.is(errorLines(run.stderr).length, 1, 'one error line');
    t.false(existsSync(out), 'nothing written');
    t.deepEqual(readdirSync(dir).sort(), ['ctx', 'secret.txt'], 'no temp file beside the output');
    t.is(qemu.vms(), 0, 'no VM for an input the host can check');
  });
}

test('a failing RUN: its line, instruction, exit code and the end of its stderr; exit 1, nothing written, no QEMU left', async (t) => {
  const dir = context(t, `FROM ${DEBIAN_BASE_REPO_TAG}\nRUN echo fine > /fine.txt\nRUN echo "about to fail" >&2 && echo "the last words" >&2 && exit 3\nRUN echo never\n`);
  const qemu = await qemuCounter(t);
  const out = join(dir, 'out.tar');
  const run = await runDockvm(['build', '--build-context', base(), '-t', 'localhost/dockvm-test/bad:1', '-o', out, join(dir, 'ctx')], { env: qemu.env });
  t.is(run.exitCode, 1, run.stderr);
  t.regex(run.stderr, /dockvm: \S*Containerfile:3: RUN echo "about to fail" >&2 && echo "the last words" >&2 && exit 3: the command failed \(exit code 3\); its stderr ends with:\nabout to fail\nthe last words/);
  t.notRegex(run.stderr, /RUN echo never\n/, 'the steps after it do not run');
  t.false(existsSync(out), 'nothing written');
  t.is(qemu.vms(), 1);
  t.false(qemu.starts().some(({ pid }) => alive(pid)), 'its QEMU is gone');
});

test('neither -t nor -o: a usage error before anything runs', async (t) => {
  const dir = context(t, `FROM ${DEBIAN_BASE_REPO_TAG}\n`);
  const run = await runDockvm(['build', join(dir, 'ctx')]);
  t.is(run.exitCode, 2);
  t.regex(run.stderr, /dockvm build needs -t NAME\[:TAG\] or -o OUT/);
});

test('a required secret that is not given is named, with the flag that gives it', async (t) => {
  const dir = context(t, `FROM ${DEBIAN_BASE_REPO_TAG}\nRUN --mount=type=secret,id=npmrc,required=true cat /run/secrets/npmrc\n`);
  const qemu = await qemuCounter(t);
  const run = await runDockvm(['build', '--build-context', base(), '-o', join(dir, 'out.tar'), join(dir, 'ctx')], { env: qemu.env });
  t.is(run.exitCode, 1);
  t.regex(run.stderr, /Containerfile:2: RUN cat \/run\/secrets\/npmrc: --mount=type=secret,id=npmrc needs the secret: pass --secret id=npmrc,src=PATH/);
  t.is(qemu.vms(), 0);
});

test('ADD of a URL whose download does not match --checksum: both digests named, nothing written, no VM', async (t) => {
  const server = createServer((_request, response) => void response.writeHead(200).end('not what was pinned\n'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.close());
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/tool.txt`;
  const pinned = `sha256:${'0'.repeat(64)}`;
  const dir = context(t, `FROM ${DEBIAN_BASE_REPO_TAG}\nADD --checksum=${pinned} ${url} /opt/\n`);
  const qemu = await qemuCounter(t);
  const out = join(dir, 'out.tar');
  const run = await runDockvm(['build', '--build-context', base(), '-o', out, join(dir, 'ctx')], { env: qemu.env });
  t.is(run.exitCode, 1, run.stderr);
  t.true(run.stderr.includes(`Containerfile:2: ADD ${url} /opt/: the download of ${url} does not match --checksum: expected ${pinned}, got sha256:`), run.stderr);
  t.false(existsSync(out));
  t.is(qemu.vms(), 0);
});
