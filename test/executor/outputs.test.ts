// Where dockvm build writes its image, read back by skopeo (dockvm inspect for .tar.gz): NAME.tar by default, .tar.gz, oci:DIR,
// oci-archive:PATH and docker://REF (a loopback registry). The Containerfile has only config steps, so no
// VM boots; every form holds the same config (the same image ID).
import test from 'ava';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEBIAN_BASE_REPO_TAG, debianBaseFixture } from '../fixtures/debian.js';
import { hasTool, peer, runDockvm } from '../helpers/peers.js';
import { needs } from '../helpers/prerequisites.js';
import { qemuCounter } from '../helpers/qemu-counter.js';
import { startRegistry } from '../helpers/registry.js';

needs(hasTool('skopeo'), 'skopeo is not installed (scripts/setup installs it)')('every output form holds the image: NAME.tar by default, .tar.gz, oci:, oci-archive:, docker://', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-build-outputs-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'Containerfile'), `FROM ${DEBIAN_BASE_REPO_TAG}\nLABEL org.example.kind=outputs\nCMD ["/bin/true"]\n`);
  const { host } = await startRegistry(t);
  const qemu = await qemuCounter(t);
  const build = async (...args: string[]) => {
    const run = await runDockvm(['build', '--build-context', `${DEBIAN_BASE_REPO_TAG}=docker-archive:${debianBaseFixture()}`, '--json', ...args, dir], { cwd: dir, env: qemu.env });
    t.is(run.exitCode, 0, run.stderr);
    return JSON.parse(run.stdout) as { imageId: string; output: string; tags: string[]; manifestDigest?: string };
  };
  const labels = async (ref: string) => (JSON.parse(await peer('skopeo', ['inspect', '--tls-verify=false', ref])) as { Labels: Record<string, string> }).Labels;

  const byDefault = await build('-t', 'registry.example/team/outputs');
  t.is(byDefault.output, 'outputs.tar', 'the last component of the first -t, in the current directory');
  t.deepEqual(byDefault.tags, ['registry.example/team/outputs:latest']);
  t.is((await labels(`docker-archive:${join(dir, 'outputs.tar')}`))['org.example.kind'], 'outputs');

  const gzip = await build('-t', 'outputs:1', '-o', join(dir, 'image.tar.gz'));
  t.deepEqual([...readFileSync(join(dir, 'image.tar.gz')).subarray(0, 2)], [0x1f, 0x8b]);
  // skopeo reads no gzipped archive (docker load and podman load do): dockvm inspect it is
  const inspected = await runDockvm(['inspect', '--json', join(dir, 'image.tar.gz')]);
  t.is(inspected.exitCode, 0, inspected.stderr);
  t.regex(inspected.stdout, /"org\.example\.kind": "outputs"/);

  const oci = await build('-t', 'outputs:1', '-o', `oci:${join(dir, 'layout')}`);
  t.is((await labels(`oci:${join(dir, 'layout')}:1`))['org.example.kind'], 'outputs');

  const ociArchive = await build('-t', 'outputs:1', '-o', `oci-archive:${join(dir, 'layout.tar')}`);
  t.is((await labels(`oci-archive:${join(dir, 'layout.tar')}:1`))['org.example.kind'], 'outputs');

  const pushed = await build('-t', 'outputs:1', '-o', `docker://${host}/dockvm/outputs:1`);
  const remote = JSON.parse(await peer('skopeo', ['inspect', '--tls-verify=false', `docker://${host}/dockvm/outputs:1`])) as { Digest: string; Labels: Record<string, string> };
  t.is(remote.Labels['org.example.kind'], 'outputs');
  t.is(pushed.manifestDigest, remote.Digest, '--json gives the pushed manifest digest');

  t.is(new Set([byDefault, gzip, oci, ociArchive, pushed].map((r) => r.imageId)).size, 1, 'one config, whatever the form');
  t.is(qemu.vms(), 0, 'config steps need no VM');
});
