// dockvm merge IMAGE… -o OUT [--json]: nixpkgs mergeImages: one docker-archive with every image and tag
// of every input, layers shared between images stored once.
import type { Command } from 'commander';
import { UsageError } from '../errors.js';
import type { OpenedImage } from '../transport/index.js';
import { printJson, say } from './io.js';

export interface MergeResult {
  output: string;
  gzip: boolean;
  images: { reference: string; repoTags: string[]; configDigest: string; layers: number }[];
  /** distinct layers stored in the output */
  layers: number;
}

export function registerMerge(program: Command): void {
  program
    .command('merge')
    .description(
      'Merge images into one docker-archive that `docker load` / `podman load` loads whole (nixpkgs mergeImages): every image and tag of every input, each layer stored once. OUT ending in .gz is gzip-compressed; "-o -" writes the archive to stdout. Every layer is checked while it is copied (digests, and no absolute or ".." paths); on failure no output file is left.',
    )
    .argument('<images...>', 'each PATH, docker-archive:PATH[:NAME:TAG], oci:DIR[:REF] or oci-archive:PATH[:REF]: the image named, or every image of the archive or layout')
    .requiredOption('-o, --output <out>', 'the archive to write (.tar, .tar.gz, or - for stdout)')
    .option('--json', 'print one JSON document describing the result')
    .action(async (references: string[], options: { output: string; json?: boolean }) => {
      if (options.json && options.output === '-') throw new UsageError('--json and -o - both want stdout; write the archive to a file');
      printResult(await merge(references, options.output), options.json === true);
    });
}

export async function merge(references: readonly string[], output: string): Promise<MergeResult> {
  // loaded on use, so that every other command starts faster
  const { openImage, openImages, parseImageReference, writeDockerArchive } = await import('../transport/index.js');
  const groups: { close(): Promise<void> }[] = [];
  try {
    const inputs: OpenedImage[] = [];
    for (const text of references) {
      const reference = parseImageReference(text);
      // A reference that names one image (NAME:TAG, @N, an OCI REF) gives that image; otherwise every image.
      const picksOne = reference.tag !== undefined || reference.index !== undefined || reference.ref !== undefined;
      const group = picksOne ? await openImage(reference).then((image) => ({ images: [image], close: () => image.close() })) : await openImages(reference);
      groups.push(group);
      inputs.push(...group.images);
    }
    const gzip = output !== '-' && output.endsWith('.gz');
    await writeDockerArchive(
      inputs.map((image) => ({ image, tags: image.repoTags, source: image.reference })),
      output,
      { gzip, checkEntries: true },
    );
    // The same image given twice (same config) is stored once, with the tags of both.
    const images = new Map<string, MergeResult['images'][number]>();
    for (const image of inputs) {
      const entry = images.get(image.configDigest);
      if (entry) entry.repoTags.push(...image.repoTags.filter((tag) => !entry.repoTags.includes(tag)));
      else images.set(image.configDigest, { reference: image.reference, repoTags: [...image.repoTags], configDigest: image.configDigest, layers: image.layers.length });
    }
    return {
      output,
      gzip,
      images: [...images.values()],
      layers: new Set(inputs.flatMap((image) => image.layers.map((layer) => layer.diffId))).size,
    };
  } finally {
    for (const group of groups) await group.close();
  }
}

function printResult(result: MergeResult, json: boolean): void {
  if (json) {
    printJson(result);
    return;
  }
  const tags = result.images.flatMap((image) => image.repoTags);
  say(`wrote ${result.output}: ${result.images.length} image(s), ${result.layers} distinct layer(s)${tags.length ? `, tags ${tags.join(', ')}` : ''}`);
}
