// A Containerfile RUN has Docker's default capabilities, as BuildKit's and Docker's containers do
// (moby's oci/caps/defaults.go; containerd's too): its bounding set is those 14, and so are root's
// permitted and effective sets; another USER has none in effect. buildah, the peer, runs RUN with the
// default_capabilities of containers-common's containers.conf, which leave out three that Docker grants
// (NET_RAW, MKNOD, AUDIT_WRITE): the same set otherwise. (A real build in the VM, and one with buildah.)
import test from 'ava';
import { createWriteStream, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { execa } from 'execa';
import { flattenImage } from '../../src/flatten/flatten.js';
import { openImage } from '../../src/transport/open.js';
import { DEBIAN_REPO_TAG } from '../fixtures/debian.js';
import { runDockvm } from '../helpers/peers.js';
import { BuildahStore, buildahUsable, fixtureContext, prepareFixtureLowers } from './peer-build.js';

const scratch = mkdtempSync(join(tmpdir(), 'dockvm-capabilities-'));
test.before(prepareFixtureLowers);
test.after.always(() => rmSync(scratch, { recursive: true, force: true }));

/** Docker's default capabilities, by number (linux/capability.h). */
const DOCKER_DEFAULT = {
  CHOWN: 0,
  DAC_OVERRIDE: 1,
  FOWNER: 3,
  FSETID: 4,
  KILL: 5,
  SETGID: 6,
  SETUID: 7,
  SETPCAP: 8,
  NET_BIND_SERVICE: 10,
  NET_RAW: 13,
  SYS_CHROOT: 18,
  MKNOD: 27,
  AUDIT_WRITE: 29,
  SETFCAP: 31,
};

function mask(caps: readonly number[]): string {
  return caps.reduce((sum, cap) => sum | (1n << BigInt(cap)), 0n).toString(16).padStart(16, '0');
}

const CONTAINERFILE = `FROM ${DEBIAN_REPO_TAG}
RUN grep ^Cap /proc/self/status > /caps-root
USER 65534
RUN grep ^Cap /proc/self/status > /tmp/caps-user
`;

/** The Cap* lines of /proc/self/status that a RUN wrote into the image, by name. */
async function capsIn(archive: string, path: string): Promise<Record<string, string>> {
  const flat = join(scratch, `${archive.replace(/[^A-Za-z0-9]/g, '_')}.flat.tar`);
  const image = await openImage(archive);
  try {
    await pipeline(flattenImage(image), createWriteStream(flat));
  } finally {
    await image.close();
  }
  const { stdout } = await execa('tar', ['-xOf', flat, path]);
  return Object.fromEntries(stdout.split('\n').filter(Boolean).map((line) => line.split(/:\s+/) as [string, string]));
}

function context(): string {
  const dir = join(scratch, 'context');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'Containerfile'), CONTAINERFILE);
  return dir;
}

test.serial('RUN as root: Docker\'s default capabilities bound, permitted and in effect; another USER: bounded, none in effect', async (t) => {
  const out = join(scratch, 'dockvm.tar');
  const run = await runDockvm(['build', '--build-context', fixtureContext(), '-t', 'localhost/dockvm-test/caps:1', '-o', out, context()]);
  t.is(run.exitCode, 0, run.stderr);
  const docker = mask(Object.values(DOCKER_DEFAULT));
  t.deepEqual(await capsIn(out, 'caps-root'), { CapInh: '0'.repeat(16), CapPrm: docker, CapEff: docker, CapBnd: docker, CapAmb: '0'.repeat(16) });
  t.deepEqual(await capsIn(out, 'tmp/caps-user'), { CapInh: '0'.repeat(16), CapPrm: '0'.repeat(16), CapEff: '0'.repeat(16), CapBnd: docker, CapAmb: '0'.repeat(16) });
});

const withBuildah = buildahUsable() ? test.serial : process.env.CI === 'true' ? test.serial : test.skip;
withBuildah('buildah\'s RUN has the same set, less the three containers.conf leaves out (NET_RAW, MKNOD, AUDIT_WRITE)', async (t) => {
  if (!buildahUsable()) return t.fail('buildah (as root) is missing: the peer cannot run');
  const store = await BuildahStore.create(join(scratch, 'buildah'));
  t.teardown(() => store.remove());
  const out = await store.build(context(), 'localhost/dockvm-test/caps:1', join(scratch, 'buildah.tar'));
  const { NET_RAW: _raw, MKNOD: _mknod, AUDIT_WRITE: _audit, ...rest } = DOCKER_DEFAULT;
  const buildahSet = mask(Object.values(rest));
  const root = await capsIn(out, 'caps-root');
  t.is(root.CapBnd, buildahSet);
  t.is(root.CapEff, buildahSet);
  t.is((await capsIn(out, 'tmp/caps-user')).CapBnd, buildahSet);
});
