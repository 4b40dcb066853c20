// What the refresh tests share: tiny base images pushed to a loopback registry, specs written beside
// their inputs, and an environment that keeps this machine's registry credentials out of the tests.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { layerTar, writeDockerArchive } from '../fixtures/assemble.js';
import { openImage } from '../../src/transport/index.js';
import { pushImage } from '../../src/transport/registry/index.js';

export async function tempDir(t: ExecutionContext, label = 'refresh'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `dockvm-${label}-test-`));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Auth files that do not exist: no credential of this machine's user reaches a test registry. */
export function noAuthFiles(dir: string): string[] {
  return [join(dir, 'no-auth.json')];
}

export function isolatedEnv(dir: string): Record<string, string> {
  return { REGISTRY_AUTH_FILE: join(dir, 'no-auth.json'), DOCKER_CONFIG: join(dir, 'no-docker-config') };
}

/** A base image archive with /etc/base-version saying `version` (and no shell: the build VM lends one). */
export async function baseArchive(dir: string, version: string): Promise<string> {
  const path = join(dir, `base-${version}.tar`);
  const layer = await layerTar([
    { path: 'etc', type: 'directory' },
    { path: 'etc/base-version', content: `${version}\n` },
  ]);
  await writeDockerArchive(path, [{ repoTag: `base:${version}`, layers: [layer], config: { config: { Env: ['PATH=/bin', `BASE=${version}`] } } }]);
  return path;
}

/** Push base `version` to `reference` (docker://HOST/REPO:TAG); the manifest digest and the base's diff_ids. */
export async function pushBase(dir: string, version: string, reference: string): Promise<{ digest: string; diffIds: string[] }> {
  const image = await openImage(await baseArchive(dir, version));
  try {
    const pushed = await pushImage(image, reference, { authFiles: noAuthFiles(dir) });
    return { digest: pushed.digest, diffIds: image.layers.map((layer) => layer.diffId) };
  } finally {
    await image.close();
  }
}

/** Write `name`.json in `dir` with these fields (output defaults to `name`.tar beside it). */
export async function writeSpec(dir: string, name: string, fields: Record<string, unknown>): Promise<string> {
  const path = join(dir, `${name}.json`);
  await writeFile(path, `${JSON.stringify({ name: `dockvm-test/${name}`, tag: '1', output: `${name}.tar`, ...fields }, null, 2)}\n`);
  return path;
}
