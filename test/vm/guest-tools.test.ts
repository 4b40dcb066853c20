// The guest's own tools per architecture (src/vm/guest-tools.ts): the host's installed packages for its own
// architecture, Debian's arm64 packages unpacked into the cache for an arm64 guest. What is read from the
// binaries without running them (busybox's applet names, ELF machine and interpreter, GNU tar's
// libraries) is checked against what running the host's own tools says. No VM boots here.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import { MissingToolError } from '../../src/errors.js';
import { ARCHITECTURES, defaultArchitecture } from '../../src/vm/architectures.js';
import { elfFacts, machineName } from '../../src/vm/elf.js';
import { busyboxApplets, fetchGuestTools, findBusybox, GUEST_GNU_TAR, guestTools, toolRoot } from '../../src/vm/guest-tools.js';

const host = defaultArchitecture();
const arm64 = ARCHITECTURES.arm64;

test('busybox applet names read from the binary are the ones the host\'s busybox lists when run', async (t) => {
  const busybox = await findBusybox(host);
  const { stdout } = await execa(busybox.path, ['--list']);
  const listed = stdout.split('\n').filter((name) => name !== '' && name !== 'busybox');
  t.deepEqual(busyboxApplets(busybox.data), listed);
  t.true(listed.length > 200, `${listed.length} applets`);
});

test('ELF facts: the machine of each architecture, static or the interpreter a dynamic program names', async (t) => {
  const busybox = elfFacts((await findBusybox(host)).data);
  t.deepEqual(busybox, { machine: host.elfMachine, bits: 64 });
  t.is(elfFacts(await readFile('/bin/tar'))?.interpreter, (await execa('readelf', ['-lW', '/bin/tar'])).stdout.match(/interpreter: (\S+)\]/)![1]);
  t.is(elfFacts(Buffer.from('#!/bin/sh\n'.padEnd(64))), undefined);
});

test('arm64: busybox, bash and GNU tar with its libraries come from Debian\'s arm64 packages, each an aarch64 program', async (t) => {
  await fetchGuestTools(arm64); // scripts/setup fetched them; this finds them in the cache
  const root = toolRoot(arm64);
  const versions = JSON.parse(await readFile(join(root, 'packages.json'), 'utf8')) as { architecture: string; versions: Record<string, string> };
  t.is(versions.architecture, 'arm64');
  t.truthy(versions.versions['busybox-static']);
  const busybox = await findBusybox(arm64);
  t.is(busybox.path, join(root, 'bin/busybox'));
  t.deepEqual(elfFacts(busybox.data), { machine: 183, bits: 64 }, 'static aarch64');
  // the same Debian busybox configuration on both architectures: the same applets
  t.deepEqual(busyboxApplets(busybox.data), busyboxApplets((await findBusybox(host)).data));

  const files = await guestTools(arm64, busybox);
  const byPath = new Map(files.map((file) => [file.path, file]));
  const tar = byPath.get(GUEST_GNU_TAR);
  t.true(tar?.type === 'file' && elfFacts(tar.data)?.machine === 183);
  t.is(tar?.type === 'file' ? elfFacts(tar.data)?.interpreter : undefined, '/lib/ld-linux-aarch64.so.1');
  const libraries = files.filter((file) => file.path.startsWith('lib') || file.path.startsWith('usr/lib/aarch64')).map((file) => file.path);
  t.deepEqual(libraries, [
    'lib/aarch64-linux-gnu/libc.so.6',
    'lib/aarch64-linux-gnu/libselinux.so.1',
    'lib/ld-linux-aarch64.so.1',
    'usr/lib/aarch64-linux-gnu/libacl.so.1',
    'usr/lib/aarch64-linux-gnu/libpcre2-8.so.0',
  ]);
  for (const path of libraries) {
    const file = byPath.get(path)!;
    t.true(file.type === 'file' && elfFacts(file.data)?.machine === 183, path);
  }
  const bash = byPath.get('usr/lib/dockvm/shell/bash');
  t.deepEqual(bash?.type === 'file' ? elfFacts(bash.data) : undefined, { machine: 183, bits: 64 });
});

test('a tool of the wrong architecture or a dynamic one is refused, naming it and what to do', async (t) => {
  const hostBusybox = (await findBusybox(host)).path;
  await t.throwsAsync(findBusybox(arm64, { ...process.env, DOCKVM_BUSYBOX_ARM64: hostBusybox }), {
    instanceOf: MissingToolError,
    message: new RegExp(`^${hostBusybox} is a ${machineName(host.elfMachine)} program, but the arm64 guest runs aarch64 ones; .* or set DOCKVM_BUSYBOX_ARM64$`),
  });
  const interpreter = elfFacts(await readFile('/bin/tar'))!.interpreter!;
  await t.throwsAsync(findBusybox(host, { ...process.env, DOCKVM_BUSYBOX: '/bin/tar' }), {
    instanceOf: MissingToolError,
    message: `/bin/tar is dynamically linked (it needs ${interpreter}); install busybox-static (apt-get install busybox-static) or set DOCKVM_BUSYBOX with a static busybox`,
  });
});
