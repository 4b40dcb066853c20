// run-as-root: nixpkgs buildImage with runAsRoot. Base image + copyToRoot + the script run as root in a
// throwaway VM + extraCommands → one new reproducible layer on top of the base → an image archive.
// (DESIGN.md "Data flow of run-as-root".) The spec is a plan of one step (src/frontend/spec/), which the
// executor runs as it runs a Containerfile's (build.ts): through the build cache, in the stage VM.
import { createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { VmError } from '../errors.js';
import { hex } from '../image/digest.js';
import type { Image } from '../image/image.js';
import { beginDockerArchive, openImage, parseDestination, writeImage, type OpenedImage } from '../transport/index.js';
import { withTempDir } from '../cleanup.js';
import type { TarEntry } from '../layer/tar.js';
import type { BuildSpec } from '../spec/load.js';
import { BuildCache, type BuildCacheOptions } from '../cache/build-cache.js';
import { executePlan } from './execute.js';
import { planSpec } from '../frontend/spec/plan.js';
import { timePhase } from '../timing.js';
import { checkLowerCount } from '../build/build-vm.js';
import { toWritable } from '../vm/index.js';
import { resolveCreated } from '../build/config.js';
import { baseTree, CopyPlacement, hiddenShellError, replacedLinkWarnings } from '../build/copy-over-base.js';
import { copyToRootTar } from '../build/copy-to-root.js';
import { imageShells } from '../build/interpreter.js';
import { buildPlatform, runnableRow } from '../build/platform.js';
import type { VmBuildOptions } from '../build/vm-layer.js';

export interface RunAsRootOptions extends VmBuildOptions {
  /** overrides the spec's `output` */
  output?: string;
  /** the build cache for the VM step (--no-cache, --cache-from, --cache-to) */
  cache?: BuildCacheOptions;
}

export interface RunAsRootResult {
  imageName: string;
  imageTag: string;
  output: string;
  configDigest: string;
  layers: { digest: string; diffId: string; size: number }[];
  /** whether a VM was booted (only when the spec has runAsRoot, and its layer was not in the build cache) */
  bootedVm: boolean;
  /** the VM step's cache key and where its layer came from ("local", "docker://REG/REPO", null: built now); null without runAsRoot, or with created "now" (no two layers alike) */
  cache: { key: string; hit: string | null } | null;
}

export async function runAsRoot(spec: BuildSpec, options: RunAsRootOptions = {}): Promise<RunAsRootResult> {
  const output = options.output ?? spec.output;
  const destination = parseDestination(output);
  const warn = options.onWarning ?? ((message: string) => void process.stderr.write(`dockvm: warning: ${message}\n`));
  const scriptOutput = options.onScriptOutput ?? toWritable(process.stderr);
  const base = spec.fromImage ? await openBase(spec) : undefined;
  try {
    // Refused before anything is written or booted: a platform the build VM cannot run the script on,
    // a base with more layers than it stacks.
    const platform = buildPlatform(spec.architecture, base?.config, spec.fromImage);
    if (spec.runAsRoot !== null) {
      runnableRow(platform, spec.fromImage ? `fromImage ${spec.fromImage}` : `the spec's architecture`);
      checkLowerCount(base?.layers.length ?? 0, spec.fromImage ?? 'scratch');
    }
    return await withTempDir('build', async (tmp) => {
      const copy = await writeCopyToRoot(spec, base, tmp, warn);
      const plan = planSpec(spec, { base: base?.config, platform, copyTar: copy });
      // An archive file gets the base layers while the VM builds the new one (they come first in it).
      const archive = base && spec.runAsRoot && destination.kind === 'docker-archive' && destination.path !== '-'
        ? beginDockerArchive(destination.path, base.layers, { gzip: destination.gzip })
        : undefined;
      try {
        const created = resolveCreated(spec.created);
        const built = await executePlan(plan, {
          // the plan names one image, its base, opened already (fromImageName/fromImageTag picked it)
          images: { open: async () => base! },
          cache: new BuildCache(options.cache),
          tmp,
          clampMtime: sourceDateEpoch() ?? Math.floor(Date.parse(created) / 1000),
          created,
          ...(options.timeoutMs !== undefined ? { signal: timeoutSignal(options.timeoutMs) } : {}),
          onEvent: (event) => {
            if (event.type === 'output') return scriptOutput(event.chunk);
            if (event.type === 'warning') warn(event.message);
          },
        });
        const step = built.steps[0]!;
        // nixpkgs derives the tag from the output's hash; the config digest names the content the same way.
        const imageTag = spec.tag ?? hex(built.image.configDigest).slice(0, 32);
        const image: Image = { ...built.image, repoTags: [`${spec.name}:${imageTag}`] };
        await timePhase('output archive written', () => (archive ? archive.finish([{ image, tags: image.repoTags }]) : writeImage(image, output, { tags: image.repoTags })));
        const layers = await timePhase('output read back', () => writtenLayers(output, image));
        const cache = step.key === null ? null : { key: step.key, hit: step.cache };
        return { imageName: spec.name, imageTag, output, configDigest: image.configDigest, layers, bootedVm: built.vmBoots > 0, cache };
      } catch (err) {
        await archive?.abort();
        throw err;
      }
    });
  } finally {
    await base?.close();
  }
}

/**
 * copyToRoot as one tar (undefined when there is none), each entry at the path it lands on over the
 * base; a base's link to a directory that a copied directory replaces is a warning, and an error when
 * that hides the image's shell or the script's interpreter (src/build/copy-over-base.ts).
 */
async function writeCopyToRoot(spec: BuildSpec, base: Image | undefined, tmp: string, warn: (message: string) => void): Promise<string | undefined> {
  if (spec.copyToRoot.length === 0) return undefined;
  const placement = base ? new CopyPlacement(await baseTree(base, spec.fromImage ?? 'the base'), spec.keepContentsDirlinks) : undefined;
  const path = join(tmp, 'copy-to-root.tar');
  await pipeline(copyToRootTar(spec.copyToRoot, { ...spec, ...(placement ? { place: (entry: TarEntry) => placement.place(entry) } : {}) }), createWriteStream(path));
  if (placement) {
    const hidden = hiddenShellError(placement, imageShells(spec.runAsRoot));
    if (hidden) throw hidden;
    for (const warning of replacedLinkWarnings(placement)) warn(warning);
  }
  return path;
}

async function openBase(spec: BuildSpec): Promise<OpenedImage> {
  const options = spec.fromImageName && spec.fromImageTag ? { name: spec.fromImageName, tag: spec.fromImageTag } : {};
  const base = await openImage(spec.fromImage!, options);
  if (spec.architecture === null || base.config.architecture === spec.architecture) return base;
  // An index's image for the spec's architecture (a platform of `platforms`); a single image of another
  // (or an index without it) stays what was opened, which buildPlatform refuses by name.
  const chosen = await openImage(spec.fromImage!, { ...options, platform: { os: 'linux', architecture: spec.architecture } }).catch(() => undefined);
  if (!chosen) return base;
  await base.close();
  return chosen;
}

/** --timeout: the VM is stopped, and the build fails saying why. */
function timeoutSignal(ms: number): AbortSignal {
  const controller = new AbortController();
  setTimeout(() => controller.abort(new VmError(`the build took longer than --timeout ${ms / 1000} s; the VM was stopped`)), ms).unref();
  return controller.signal;
}

/** SOURCE_DATE_EPOCH, when set, clamps every mtime (reproducible-builds.org). */
function sourceDateEpoch(): number | undefined {
  const value = process.env.SOURCE_DATE_EPOCH;
  if (value === undefined || value === '') return undefined;
  const epoch = Number(value);
  return Number.isInteger(epoch) && epoch >= 0 ? epoch : undefined;
}

/**
 * The layers as the output holds them. Read back from what was written rather than from the inputs:
 * an OCI layout stores gzip blobs (other digests than the source's), and a docker-archive stores plain
 * tars, whose digest is their diff_id (checked while they were copied) — so no layer is hashed again.
 */
async function writtenLayers(output: string, image: Image): Promise<RunAsRootResult['layers']> {
  const destination = parseDestination(output);
  if (destination.kind === 'docker-archive' && destination.path === '-') {
    return Promise.all(
      image.layers.map(async (layer) => {
        const blob = await layer.blob();
        return { digest: blob.digest, diffId: layer.diffId, size: blob.size };
      }),
    );
  }
  const reference = destination.kind === 'oci' ? output : `docker-archive:${destination.path}`;
  const written = await openImage(reference, destination.kind === 'oci' ? {} : { name: image.repoTags[0]!.replace(/:[^:/]*$/, ''), tag: image.repoTags[0]!.replace(/^.*:/, '') });
  try {
    return await Promise.all(
      written.layers.map(async (layer) => {
        const local = destination.kind === 'docker-archive' ? await layer.localTar?.() : undefined;
        if (local) return { digest: layer.diffId, diffId: layer.diffId, size: local.size };
        const blob = await layer.blob();
        return { digest: blob.digest, diffId: layer.diffId, size: blob.size };
      }),
    );
  } finally {
    await written.close();
  }
}
