// The Containerfile corpus (test/containerfiles/) and the executor's own features (contexts/users) built
// by dockvm (real VM boots) and by buildah, the peer (`buildah bud --format docker --isolation chroot`, as
// root), over the Debian fixture: the flattened filesystems (paths, types, modes, owners, sizes, contents,
// link targets, xattrs; mtimes aside) and the config fields are equal. Known differences, and only these:
// the empty /etc/hosts, /etc/hostname and /etc/resolv.conf buildah leaves, its io.buildah.version label,
// and ArgsEscaped (BuildKit writes it with CMD, buildah does not). shell-exec (heredocs) and add-tar
// (ADD --unpack) use what buildah 1.28 lacks: corpus-content.test.ts checks them by content.
// Serial: each build boots a VM (two for two stages) and buildah builds natively; in parallel they would
// only slow each other down under TCG.
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runDockvm } from '../helpers/peers.js';
import { needs } from '../helpers/prerequisites.js';
import { qemuCounter } from '../helpers/qemu-counter.js';
import { BuildahStore, buildahStub, buildahUsable, comparableConfig, filesystemDifferences, fixtureContext, flattenedListing, imageConfig, prepareFixtureLowers } from './peer-build.js';

const corpus = fileURLToPath(new URL('../containerfiles/', import.meta.url));
const contexts = fileURLToPath(new URL('./contexts/', import.meta.url));

const scratch = mkdtempSync(join(tmpdir(), 'dockvm-corpus-peer-'));
let store: Promise<BuildahStore> | undefined;
const buildah = () => (store ??= BuildahStore.create(join(scratch, 'buildah')));
test.before(prepareFixtureLowers);
test.after.always(async () => {
  await (await store?.catch(() => undefined))?.remove();
  rmSync(scratch, { recursive: true, force: true });
});

// [name, context, stages (VM boots), buildah --layers (see BuildahStore.build)]
const cases: [name: string, dir: string, stages: number, layers?: boolean][] = [
  ['deletes', join(corpus, 'deletes'), 1],
  ['opaque', join(corpus, 'opaque'), 1],
  ['special-files', join(corpus, 'special-files'), 1, true],
  ['multistage-chown', join(corpus, 'multistage-chown'), 2],
  ['dockerignore', join(corpus, 'dockerignore'), 1],
  ['metadata', join(corpus, 'metadata'), 1],
  ['args-env', join(corpus, 'args-env'), 1],
  ['onbuild', join(corpus, 'onbuild'), 2],
  ['users (executor features)', join(contexts, 'users'), 1],
  ['scratch (a final stage FROM scratch)', join(contexts, 'scratch'), 1],
];

for (const [name, dir, stages, layers] of cases) {
  needs(buildahUsable(), 'buildah is not installed or this is not root (scripts/setup installs it; buildah bud --isolation chroot needs root)', test.serial)(
    `${name}: dockvm build gives buildah's filesystem and config`,
    async (t) => {
      const tag = `localhost/dockvm-test/${name.replace(/[^a-z-]/g, '')}:1`;
      const ours = join(scratch, `${name}.dockvm.tar`);
      const qemu = await qemuCounter(t);
      const run = await runDockvm(['build', '--build-context', fixtureContext(), '-t', tag, '-o', ours, dir], { env: qemu.env });
      t.is(run.exitCode, 0, run.stderr);
      t.is(qemu.vms(), stages, 'one VM boot per stage');
      const theirs = await (await buildah()).build(dir, tag, join(scratch, `${name}.buildah.tar`), { layers: layers === true });
      t.teardown(() => Promise.all([ours, theirs].map((archive) => rm(archive, { force: true }))));

      const [a, b] = [await flattenedListing(ours, scratch), await flattenedListing(theirs, scratch)];
      t.true(a.size > (name.startsWith('scratch') ? 5 : 1000), 'the flattened image holds what was built (the whole Debian filesystem over a Debian base)');
      t.deepEqual(filesystemDifferences(a, b, (path) => buildahStub(path, b, a)), []);
      t.deepEqual(comparableConfig((await imageConfig(ours)).config), comparableConfig((await imageConfig(theirs)).config));
    },
  );
}
