// A build for several platforms (--platform linux/amd64,linux/arm64): which platforms, whether the output
// can hold them (an index: an OCI layout, an OCI archive or a registry; a docker-archive holds one image
// per name, so it cannot), progress lines that say which platform each step is for, and the images
// written as one index. The build itself is the single-platform build, once per platform (build.ts).
import { join } from 'node:path';
import { UsageError } from '../errors.js';
import type { Descriptor } from '../image/descriptor.js';
import type { Image } from '../image/image.js';
import { parseImageReference, splitNameTag } from '../image/reference.js';
import { formatPlatform, parsePlatform } from '../image/platform.js';
import { parseDestination, writeOciIndex } from '../transport/index.js';
import { pushIndex } from '../transport/registry/push.js';
import type { RegistryOptions } from '../transport/registry/index.js';
import type { Platform } from '../image/config.js';
import type { BuildEventSink } from './events.js';
import { writeOciArchive } from '../transport/oci-archive-writer.js';

/**
 * "--platform linux/amd64,linux/arm64" as the platforms to build, each normalised ("linux/arm64/v8" and
 * "arm64" are "linux/arm64"); [undefined] when none is asked for (each base's own). A platform given
 * twice, or one that is not os/arch[/variant], is a usage error.
 */
export function parsePlatforms(text: string | undefined): (string | undefined)[] {
  if (text === undefined || !text.includes(',')) return [text];
  const platforms: string[] = [];
  for (const part of text.split(',')) {
    const platform = parsePlatform(part);
    if (!platform) throw new UsageError(`--platform ${text}: "${part}" is not a platform; write os/arch[/variant], e.g. linux/amd64,linux/arm64`);
    const name = formatPlatform(platform);
    if (platforms.includes(name)) throw new UsageError(`--platform ${text}: ${name} is given twice`);
    platforms.push(name);
  }
  return platforms;
}

/** Refused before anything is built: an output that holds one image, asked to hold several platforms'. */
export function checkIndexOutput(output: string, platforms: readonly (string | undefined)[]): void {
  if (output.startsWith('docker://') || output.startsWith('oci-archive:') || output.startsWith('oci:')) return;
  throw new UsageError(
    `-o ${output}: a docker-archive holds one image per name, not the ${platforms.length} platforms asked for (${platforms.join(', ')}); ` +
      'write an OCI layout (oci:DIR), an OCI archive (oci-archive:PATH) or push (docker://REF), or build one platform',
  );
}

/**
 * The executor's events for each platform in turn: vertex numbers go on from the last platform's (one
 * build's progress, not several starting at #1), and each step's name says its platform, as buildx
 * shows it ("[linux/arm64 2/3] RUN make").
 */
export class PlatformEvents {
  #offset = 0;
  #highest = 0;

  constructor(private readonly onEvent: BuildEventSink | undefined) {}

  for(platform: string): BuildEventSink | undefined {
    const { onEvent } = this;
    if (!onEvent) return undefined;
    this.#offset = this.#highest;
    const offset = this.#offset;
    return (event) => {
      if (!('id' in event)) {
        return onEvent(event.type === 'boot' ? { ...event, stage: `${event.stage} (${platform})` } : event);
      }
      const id = event.id + offset;
      this.#highest = Math.max(this.#highest, id);
      return onEvent(event.type === 'vertex' ? { ...event, id, name: event.name.replace(/^\[/, `[${platform} `) } : { ...event, id });
    };
  }
}

export interface WrittenPlatforms {
  index: { mediaType: string; digest: string };
  /** each image's manifest and platform, in the order given */
  manifests: { digest: string; platform: Platform }[];
}

/** Write the platforms' images as one index where `output` says: oci:DIR[:REF], oci-archive:PATH, docker://REF. */
export async function writeIndex(images: readonly Image[], output: string, tags: readonly string[], tmp: string, registry: RegistryOptions): Promise<WrittenPlatforms> {
  if (output.startsWith('docker://')) {
    const pushed = await pushIndex(images, parseImageReference(output), registry);
    return { index: { mediaType: pushed.mediaType, digest: pushed.digest }, manifests: pushed.manifests };
  }
  const first = tags[0];
  const tag = first ? (splitNameTag(first, first).tag ?? 'latest') : undefined;
  const written = async (dir: string, ref: string | undefined): Promise<WrittenPlatforms> => {
    const { index, manifests } = await writeOciIndex(images, dir, ref === undefined ? {} : { ref });
    return { index: { mediaType: index.mediaType, digest: index.digest }, manifests: manifests.map(withPlatform) };
  };
  if (output.startsWith('oci-archive:')) {
    const layout = join(tmp, 'oci-layout');
    const result = await written(layout, tag);
    await writeOciArchive(output, layout);
    return result;
  }
  const destination = parseDestination(output);
  if (destination.kind !== 'oci') throw new Error(`${output} cannot hold an index`); // checkIndexOutput refused it
  return written(destination.dir, destination.ref ?? tag);
}

function withPlatform(descriptor: Descriptor): { digest: string; platform: Platform } {
  return { digest: descriptor.digest, platform: descriptor.platform! };
}
