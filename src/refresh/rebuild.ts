// One rebuild: run-as-root into a temporary output, push it when asked, and only then put it in the
// output's place. A build or push that fails leaves the previous output (and the lock) as they were.
// A spec with several platforms builds each (run-as-root-platforms.ts) and pushes their index.
import { createReadStream, rmSync } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import type { RunAsRootResult } from '../executor/run-as-root.js';
import { runAsRootPlatforms, type RunAsRootPlatformsResult } from '../executor/run-as-root-platforms.js';
import type { VmBuildOptions } from '../build/vm-layer.js';
import { withTempDir } from '../cleanup.js';
import { pushSource } from '../transport/push-source.js';
import type { BuildSpec } from '../spec/load.js';
import { openImage, openIndex, parseDestination, writeImage, writeOciIndex } from '../transport/index.js';
import { openRegistryImage, type PushIndexResult, type PushResult, type RegistryOptions } from '../transport/registry/index.js';

export interface RebuildOptions extends VmBuildOptions {
  /** fromImage for the build (the pinned base), null for scratch */
  fromImage: string | null;
  /**
   * Set when pulling the docker:// base needs more than the defaults (credentials, plain HTTP): run-as-root
   * opens docker:// bases with the defaults only, so the base is first copied to a temp layout with these.
   */
  baseRegistry?: RegistryOptions;
  /** push the result here (a docker:// reference) */
  pushTo?: (imageName: string, imageTag: string) => { reference: string; options: RegistryOptions } | null;
}

export interface Rebuilt {
  build: RunAsRootResult | RunAsRootPlatformsResult;
  /** bytes and sha256 (hex) of the archive; null for an OCI layout */
  outputSize: number | null;
  outputSha256: string | null;
  pushed: PushResult | PushIndexResult | null;
}

export async function rebuild(spec: BuildSpec, options: RebuildOptions): Promise<Rebuilt> {
  if (options.fromImage !== null && options.baseRegistry) {
    const pinned = options.fromImage;
    const baseRegistry = options.baseRegistry;
    return withTempDir('refresh-base', async (tmp) => {
      // every platform the spec builds (an index base gives each its image), else the one the build picks
      const platforms = spec.platforms && spec.platforms.length > 1 ? spec.platforms : undefined;
      const images = [];
      try {
        for (const platform of platforms ?? [undefined]) {
          images.push(await openRegistryImage(pinned, { ...baseRegistry, ...(platform ? { platform: { os: 'linux', architecture: platform.split('/')[1]! } } : {}) }));
        }
        if (platforms) await writeOciIndex(images, join(tmp, 'base'));
        else await writeImage(images[0]!, `oci:${join(tmp, 'base')}`, { tags: [] });
      } finally {
        await Promise.all(images.map((image) => image.close()));
      }
      return buildAndPublish(spec, { ...options, fromImage: `oci:${join(tmp, 'base')}` });
    });
  }
  return buildAndPublish(spec, options);
}

async function buildAndPublish(spec: BuildSpec, options: RebuildOptions): Promise<Rebuilt> {
  const destination = parseDestination(spec.output);
  const buildSpec: BuildSpec = { ...spec, fromImage: options.fromImage };
  const vmOptions: VmBuildOptions = {
    ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
    ...(options.onScriptOutput ? { onScriptOutput: options.onScriptOutput } : {}),
  };
  if (destination.kind === 'oci') {
    // A layout may hold other images: build into a private one, then add the image to the real one.
    return withTempDir('refresh-out', async (tmp) => {
      const layout = `oci:${join(tmp, 'layout')}${destination.ref !== undefined ? `:${destination.ref}` : ''}`;
      const build = await runAsRootPlatforms(buildSpec, { ...vmOptions, output: layout });
      const pushed = await pushIfAsked(layout, build, options);
      const index = await openIndex(layout);
      if (index) {
        try {
          await writeOciIndex(index.images.map((entry) => entry.image), destination.dir, { ref: destination.ref ?? build.imageTag });
        } finally {
          await index.close();
        }
      } else {
        const image = await openImage(layout);
        try {
          await writeImage(image, spec.output, { tags: [`${build.imageName}:${build.imageTag}`] });
        } finally {
          await image.close();
        }
      }
      return { build: { ...build, output: spec.output }, outputSize: null, outputSha256: null, pushed };
    });
  }
  // An archive: written beside its place under a temp name with the same extension, renamed at the end.
  const temp = join(dirname(destination.path), `.refresh-${randomBytes(6).toString('hex')}-${basename(destination.path)}`);
  const removeTemp = () => rmSync(temp, { force: true });
  process.once('exit', removeTemp);
  try {
    const build = await runAsRootPlatforms(buildSpec, { ...vmOptions, output: temp });
    const outputSize = (await stat(temp)).size;
    const outputSha256 = await sha256File(temp);
    const pushed = await pushIfAsked(temp, build, options);
    await rename(temp, destination.path);
    return { build: { ...build, output: spec.output }, outputSize, outputSha256, pushed };
  } finally {
    process.off('exit', removeTemp);
    await rm(temp, { force: true });
  }
}

async function pushIfAsked(source: string, build: RunAsRootResult | RunAsRootPlatformsResult, options: RebuildOptions): Promise<PushResult | PushIndexResult | null> {
  const target = options.pushTo?.(build.imageName, build.imageTag);
  if (!target) return null;
  return pushSource(source, target.reference, target.options);
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}
