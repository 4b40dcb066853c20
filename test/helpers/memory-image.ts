// Images built in memory from layer tar Buffers, for testing operations on the Image interface without
// any transport. With `inPlace`, the layers are also written to one temp file and offered through
// Layer.localTar, as an uncompressed archive would offer them.
import { writeFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { fileSync } from 'tmp-promise';
import { DigestingStream, sha256 } from '../../src/image/digest.js';
import type { Image, Layer } from '../../src/image/image.js';
import { MediaType } from '../../src/image/media-types.js';

export interface MemoryImageOptions {
  repoTag?: string;
  /** offer each layer in place through localTar() (a temp file, removed by `dispose`) */
  inPlace?: boolean;
  /** the diff_ids to claim instead of the layers' real digests (to test verification) */
  diffIds?: `sha256:${string}`[];
}

export interface MemoryImage extends Image {
  /** remove the temp file of an inPlace image */
  dispose(): void;
}

export function memoryImage(layerTars: Buffer[], options: MemoryImageOptions = {}): MemoryImage {
  const diffIds = layerTars.map((tar, i) => options.diffIds?.[i] ?? sha256(tar));
  let file: { name: string; removeCallback: () => void } | undefined;
  const offsets: number[] = [];
  if (options.inPlace) {
    const made = fileSync({ prefix: 'dockvm-memory-image-', postfix: '.tar' });
    file = made;
    let at = 0;
    for (const tar of layerTars) {
      offsets.push(at);
      at += tar.length;
    }
    writeFileSync(made.name, Buffer.concat(layerTars));
  }
  const layers: Layer[] = layerTars.map((tar, i) => ({
    diffId: diffIds[i]!,
    blob: async () => ({ mediaType: MediaType.DockerLayer, digest: diffIds[i]!, size: tar.length }),
    openBlob: async () => Readable.from([tar]),
    openTar: async () => Readable.from([tar]).pipe(new DigestingStream({ expect: diffIds[i]!, what: `layer ${i + 1}` })),
    ...(file ? { localTar: async () => ({ path: file.name, offset: offsets[i]!, size: tar.length }) } : {}),
  }));
  const rawConfig = Buffer.from(
    JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: diffIds } }),
  );
  return {
    rawConfig,
    config: JSON.parse(rawConfig.toString()),
    configDigest: sha256(rawConfig),
    layers,
    repoTags: options.repoTag ? [options.repoTag] : [],
    dispose: () => file?.removeCallback(),
  };
}
