// run-as-root for a spec's `platforms` (dockvm's field beside nixpkgs' `architecture`): the one-platform
// build (run-as-root.ts) once per platform, each with that platform as its architecture (an index base
// gives each its own image; runAsRoot runs in each platform's VM), each into an OCI layout; then the
// images as one OCI image index in the output (an OCI layout: a docker-archive holds one platform).
// A spec without `platforms`, or with one, is the one-platform build.
import { readdir, rmdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { writeAtomically } from '../output.js';
import { DockvmError, SpecError } from '../errors.js';
import { canonicalJson } from '../cache/canonical-json.js';
import { hex, sha256 } from '../image/digest.js';
import { withTempDir } from '../cleanup.js';
import type { BuildSpec } from '../spec/load.js';
import { openImage, parseDestination, writeOciIndex, type OpenedImage } from '../transport/index.js';
import { formatPlatform } from '../transport/registry/platform.js';
import { runAsRoot, type RunAsRootOptions, type RunAsRootResult } from './run-as-root.js';

export interface PlatformBuild {
  /** "linux/arm64/v8", as the index labels it */
  platform: string;
  configDigest: string;
  /** its manifest in the index */
  manifestDigest: string;
  /** as the output holds them */
  layers: RunAsRootResult['layers'];
  bootedVm: boolean;
  cache: RunAsRootResult['cache'];
}

export interface RunAsRootPlatformsResult {
  imageName: string;
  /** the spec's tag; else derived from every platform's config */
  imageTag: string;
  output: string;
  /** the index the output names by the tag */
  index: { mediaType: string; digest: string };
  platforms: PlatformBuild[];
  /** whether any platform booted a VM */
  bootedVm: boolean;
}

/** One image per platform of the spec, as an index; without several platforms, runAsRoot itself. */
export async function runAsRootPlatforms(spec: BuildSpec, options: RunAsRootOptions = {}): Promise<RunAsRootResult | RunAsRootPlatformsResult> {
  const platforms = spec.platforms ?? [];
  if (platforms.length <= 1) {
    const architecture = platforms[0]?.split('/')[1];
    return runAsRoot(architecture ? { ...spec, architecture, platforms: null } : spec, options);
  }
  const output = options.output ?? spec.output;
  const destination = parseDestination(output);
  if (destination.kind !== 'oci') {
    throw new SpecError(`output: ${output} is a docker-archive, which holds one platform's image; platforms lists ${platforms.length}: write an OCI layout (oci:DIR)`, [], { field: 'output' });
  }
  await checkBase(spec, platforms);
  // A new output directory is built where it will be (each platform's image, then their index into the
  // same layout, renamed into place when complete: no blob copied twice); an existing layout gets the
  // index added from a private one.
  const state = await stat(destination.dir).then((info) => (info.isDirectory() ? readdir(destination.dir) : ['']), () => undefined);
  if (state === undefined || state.length === 0) {
    if (state) await rmdir(destination.dir);
    return writeAtomically(destination.dir, (layout) => buildInto(spec, platforms, options, layout, destination.ref, output, true));
  }
  return withTempDir('platforms', (tmp) => buildInto(spec, platforms, options, join(tmp, 'layout'), destination.ref, output, false, destination.dir));
}

/** Each platform's image into the layout `layout` (refs p0, p1…), then their index into `into` (default: that layout, naming the index alone). */
async function buildInto(
  spec: BuildSpec,
  platforms: readonly string[],
  options: RunAsRootOptions,
  layout: string,
  ref: string | undefined,
  output: string,
  inPlace: boolean,
  into = layout,
): Promise<RunAsRootPlatformsResult> {
  const built: RunAsRootResult[] = [];
  for (const [i, platform] of platforms.entries()) {
    // a fixed tag for now (the index's is known once every platform is built): the layout's ref, not part of any image
    const one: BuildSpec = { ...spec, architecture: platform.split('/')[1]!, platforms: null, tag: spec.tag ?? 'platform' };
    built.push(await runAsRoot(one, { ...options, output: `oci:${layout}:p${i}` }));
  }
  // nixpkgs derives the tag from the output's hash: here, from every platform's image
  const imageTag = spec.tag ?? hex(sha256(canonicalJson(built.map((b) => b.configDigest)))).slice(0, 32);
  const images: OpenedImage[] = [];
  try {
    for (const i of platforms.keys()) images.push(await openImage(`oci:${layout}:p${i}`));
    const written = await writeOciIndex(images, into, { ref: ref ?? imageTag, ...(inPlace ? { alone: true } : {}) });
    return {
      imageName: spec.name,
      imageTag,
      output,
      index: { mediaType: written.index.mediaType, digest: written.index.digest },
      platforms: built.map((b, i) => ({
        platform: formatPlatform(written.manifests[i]!.platform!),
        configDigest: b.configDigest,
        manifestDigest: written.manifests[i]!.digest,
        layers: b.layers,
        bootedVm: b.bootedVm,
        cache: b.cache,
      })),
      bootedVm: built.some((b) => b.bootedVm),
    };
  } finally {
    await Promise.all(images.map((image) => image.close()));
  }
}

/** Before anything is built: the base has an image for every platform (an index), or the spec names it as each. */
async function checkBase(spec: BuildSpec, platforms: readonly string[]): Promise<void> {
  if (spec.fromImage === null) return;
  const pick = spec.fromImageName && spec.fromImageTag ? { name: spec.fromImageName, tag: spec.fromImageTag } : {};
  for (const platform of platforms) {
    const [os, architecture, variant] = platform.split('/') as [string, string, string | undefined];
    const image = await openImage(spec.fromImage, { ...pick, platform: { os, architecture, ...(variant ? { variant } : {}) } }).catch((err: unknown) => {
      // the transports' word for a base of other platforms only (a missing file, a registry down: as they are)
      if (err instanceof DockvmError && /is an image for|no image for/.test(err.message)) {
        throw new SpecError(`platforms: ${platform} cannot be built over fromImage: ${err.message}`, [], { field: 'platforms', cause: err });
      }
      throw err;
    });
    await image.close();
  }
}
