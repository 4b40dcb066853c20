// `dockvm build` as a library call: a Containerfile and its context planned (src/frontend/containerfile/),
// the plan executed (execute.ts), the target stage's image written where the output says: a
// docker-archive (.tar, .tar.gz), an OCI layout (oci:DIR), an OCI archive (oci-archive:PATH) or a
// registry (docker://REF). With several platforms (--platform linux/amd64,linux/arm64) the plan is made
// and executed once per platform, each in VMs of that platform, and the images are written as one index
// (platforms.ts). Nothing is written when the build fails; every temp file goes with it.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { UsageError, ImageReferenceError } from '../errors.js';
import type { Image } from '../image/image.js';
import { parseImageReference, splitNameTag } from '../image/reference.js';
import { withTempDir } from '../cleanup.js';
import { BuildCache, type BuildCacheOptions } from '../cache/build-cache.js';
import { planContainerfile } from '../frontend/containerfile/index.js';
import { parseDestination, writeImage } from '../transport/index.js';
import { pushImage } from '../transport/registry/push.js';
import type { RegistryOptions } from '../transport/registry/index.js';
import type { BuildEventSink } from './events.js';
import { executePlan, type StepReport } from './execute.js';
import { checkIndexOutput, parsePlatforms, PlatformEvents, writeIndex } from './platforms.js';
import { writeOciArchive } from '../transport/oci-archive-writer.js';
import { formatPlatform } from '../transport/registry/platform.js';
import { ImageSource } from './image-source.js';

export interface BuildOptions {
  /** the build context (default ".") */
  contextDir?: string;
  /** the Containerfile (default CONTEXT/Containerfile, else CONTEXT/Dockerfile) */
  file?: string;
  /** NAME[:TAG]…: the image's names (":latest" when untagged) */
  tags?: readonly string[];
  /** where the image goes (default `<last name component of the first tag>.tar`) */
  output?: string;
  buildArgs?: Readonly<Record<string, string>>;
  target?: string;
  /**
   * the platform to build for ("linux/arm64"), or several, comma-separated ("linux/amd64,linux/arm64"):
   * one image each, written as an index; default: each base's own
   */
  platform?: string;
  /** --build-context NAME=IMAGE: an image that stands in for a FROM / --from name */
  buildContexts?: Readonly<Record<string, string>>;
  /** --secret id → file */
  secrets?: Readonly<Record<string, string>>;
  network?: 'default' | 'none';
  /** --timestamp: created time and mtime clamp, seconds (default SOURCE_DATE_EPOCH, else 1970-01-01T00:00:01Z) */
  timestamp?: number;
  cache?: BuildCacheOptions;
  registry?: RegistryOptions;
  memoryMiB?: number;
  signal?: AbortSignal;
  onEvent?: BuildEventSink;
}

export interface BuildResult {
  /** the first tag's name */
  name: string;
  tags: string[];
  output: string;
  /** sha256 of the image config: the image ID (one platform; see `platforms` for several) */
  imageId?: string;
  /** the manifest's digest, when pushed */
  manifestDigest?: string;
  /** each layer's diff_id and, where the build has it at hand, the size of its uncompressed tar */
  layers?: LayerReport[];
  /** several platforms: each one's image, in the order asked for */
  platforms?: PlatformReport[];
  /** several platforms: the index that names their manifests */
  index?: { mediaType: string; digest: string };
  /** every step of every platform (with several, each names its platform) */
  steps: (StepReport & { platform?: string })[];
  vmBoots: number;
  warnings: string[];
}

type LayerReport = { diffId: string; size?: number };

export interface PlatformReport {
  /** "linux/arm64/v8", as the index labels it */
  platform: string;
  imageId: string;
  /** the platform's manifest in the index */
  manifestDigest: string;
  layers: LayerReport[];
}

/** The fixed time of an unstamped build: reproducible, and the same as run-as-root's default. */
const DEFAULT_CREATED = '1970-01-01T00:00:01Z';

export async function buildContainerfile(options: BuildOptions): Promise<BuildResult> {
  const tags = (options.tags ?? []).map(normalizeTag);
  const output = options.output ?? defaultOutput(tags);
  checkOutput(output);
  const platforms = parsePlatforms(options.platform);
  if (platforms.length > 1) checkIndexOutput(output, platforms);
  const { created, clampMtime } = buildTime(options.timestamp);
  const cache = new BuildCache(options.cache);
  const pushedTo = [output, ...(options.cache?.cacheFrom ?? []), ...(options.cache?.cacheTo ?? [])].filter((ref) => ref.startsWith('docker://'));
  const images = new ImageSource(options.buildContexts, options.registry, new Set(pushedTo.map(registryHost)));
  const secrets = await secretFiles(options.secrets ?? {});
  try {
    return await withTempDir('containerfile', async (tmp) => {
      // One plan and execution per platform: a thin loop over the single-platform build. Every platform is
      // planned first, so that a base without an image for one of them fails before any VM boots.
      const events = platforms.length > 1 ? new PlatformEvents(options.onEvent) : undefined;
      const plans = [];
      for (const platform of platforms) {
        plans.push(
          await planContainerfile({
            contextDir: options.contextDir ?? '.',
            ...(options.file !== undefined ? { file: options.file } : {}),
            ...(options.buildArgs ? { buildArgs: options.buildArgs } : {}),
            ...(options.target !== undefined ? { target: options.target } : {}),
            ...(platform !== undefined ? { platform } : {}),
            resolveBase: images.resolveBase,
          }),
        );
      }
      // the same Containerfile warns the same for every platform: once is enough
      for (const message of plans[0]!.warnings) options.onEvent?.({ type: 'warning', message });
      const built: { platform: string | undefined; image: Image; steps: BuildResult['steps']; vmBoots: number; warnings: string[] }[] = [];
      for (const [i, platform] of platforms.entries()) {
        const plan = plans[i]!;
        const onEvent = events ? events.for(platform!) : options.onEvent;
        const platformTmp = platforms.length > 1 ? join(tmp, `platform-${i}`) : tmp;
        if (platformTmp !== tmp) await mkdir(platformTmp);
        const result = await executePlan(plan, {
          images,
          cache,
          tmp: platformTmp,
          clampMtime,
          created,
          secrets,
          ...(options.network ? { network: options.network } : {}),
          ...(options.memoryMiB ? { memoryMiB: options.memoryMiB } : {}),
          ...(options.signal ? { signal: options.signal } : {}),
          ...(onEvent ? { onEvent } : {}),
        });
        const steps = platforms.length === 1 ? result.steps : result.steps.map((step) => ({ ...step, platform: platform! }));
        built.push({ platform, image: { ...result.image, repoTags: tags }, steps, vmBoots: result.vmBoots, warnings: plan.warnings });
      }
      const common = {
        name: tags[0] ? splitNameTag(tags[0], tags[0]).name : '',
        tags,
        output,
        steps: built.flatMap((b) => b.steps),
        vmBoots: built.reduce((sum, b) => sum + b.vmBoots, 0),
        warnings: built[0]!.warnings,
      };
      if (built.length > 1) {
        const index = await writeIndex(built.map((b) => b.image), output, tags, tmp, options.registry ?? {});
        return {
          ...common,
          index: index.index,
          platforms: await Promise.all(
            built.map(async (b, i) => ({ platform: formatPlatform(index.manifests[i]!.platform), imageId: b.image.configDigest, manifestDigest: index.manifests[i]!.digest, layers: await Promise.all(b.image.layers.map(layerReport)) })),
          ),
        };
      }
      const { image } = built[0]!;
      const manifestDigest = await writeResult(image, output, tags, tmp, options.registry ?? {});
      return {
        ...common,
        imageId: image.configDigest,
        ...(manifestDigest ? { manifestDigest } : {}),
        layers: await Promise.all(image.layers.map(layerReport)),
      };
    });
  } finally {
    await images.close();
  }
}

/** The registry a docker:// reference is pushed to, as the registry client names it. */
function registryHost(ref: string): string {
  try {
    return parseImageReference(ref).registry ?? '';
  } catch {
    return ref.slice('docker://'.length).split('/')[0]!;
  }
}

/** A layer for the result, without hashing it again (its blob's digest would read a base's whole tar). */
async function layerReport(layer: Image['layers'][number]): Promise<LayerReport> {
  const local = await layer.localTar?.();
  return local ? { diffId: layer.diffId, size: local.size } : { diffId: layer.diffId };
}

function normalizeTag(tag: string): string {
  let parsed;
  try {
    parsed = splitNameTag(tag, tag);
  } catch (err) {
    if (err instanceof ImageReferenceError) throw new UsageError(`-t ${tag}: ${err.message}`, { cause: err });
    throw err;
  }
  if (parsed.name !== parsed.name.toLowerCase()) throw new UsageError(`-t ${tag}: an image name must be lowercase`);
  return parsed.tag === undefined ? `${parsed.name}:latest` : tag;
}

function defaultOutput(tags: readonly string[]): string {
  const first = tags[0];
  if (first === undefined) throw new UsageError('dockvm build needs -t NAME[:TAG] or -o OUT: say what the image is called, or where it goes');
  const { name } = splitNameTag(first, first);
  return `${name.slice(name.lastIndexOf('/') + 1)}.tar`;
}

/** A malformed output is a usage error before anything is built. */
function checkOutput(output: string): void {
  try {
    if (output.startsWith('docker://')) parseImageReference(output);
    else if (output.startsWith('oci-archive:')) {
      if (output.length === 'oci-archive:'.length) throw new ImageReferenceError('oci-archive: needs a path');
    } else parseDestination(output);
  } catch (err) {
    if (err instanceof ImageReferenceError) throw new UsageError(`-o ${output}: ${err.message}`, { cause: err });
    throw err;
  }
}

function buildTime(timestamp: number | undefined): { created: string; clampMtime: number } {
  const epoch = timestamp ?? sourceDateEpoch();
  if (epoch === undefined) return { created: DEFAULT_CREATED, clampMtime: Date.parse(DEFAULT_CREATED) / 1000 };
  return { created: new Date(epoch * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z'), clampMtime: epoch };
}

function sourceDateEpoch(): number | undefined {
  const value = process.env.SOURCE_DATE_EPOCH;
  if (value === undefined || value === '') return undefined;
  const epoch = Number(value);
  return Number.isInteger(epoch) && epoch >= 0 ? epoch : undefined;
}

/** --secret files, checked before anything runs (a missing one is the user's to fix, not a RUN failure). */
async function secretFiles(secrets: Readonly<Record<string, string>>): Promise<Map<string, string>> {
  const { stat } = await import('node:fs/promises');
  const files = new Map<string, string>();
  for (const [id, path] of Object.entries(secrets)) {
    const info = await stat(path).catch(() => undefined);
    if (!info?.isFile()) throw new UsageError(`--secret id=${id},src=${path}: ${path} is not a readable file`);
    files.set(id, path);
  }
  return files;
}

/** Write the image; for a registry, its manifest digest. */
async function writeResult(image: Image, output: string, tags: string[], tmp: string, registry: RegistryOptions): Promise<string | undefined> {
  if (output.startsWith('docker://')) {
    const pushed = await pushImage(image, parseImageReference(output), registry);
    return pushed.digest;
  }
  if (output.startsWith('oci-archive:')) {
    const layout = join(tmp, 'oci-layout');
    const first = tags[0];
    await writeImage(image, `oci:${layout}${first ? `:${splitNameTag(first, first).tag ?? 'latest'}` : ''}`, { tags });
    await writeOciArchive(output, layout);
    return undefined;
  }
  await writeImage(image, output, { tags });
  return undefined;
}
