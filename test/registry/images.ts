// Small images for the registry tests, and a way to put an index into a registry by hand.
import { Readable } from 'node:stream';
import { DigestingStream, sha256, type Digest } from '../../src/image/digest.js';
import type { Image, Layer } from '../../src/image/image.js';
import { MediaType } from '../../src/image/media-types.js';
import { layerTar } from '../fixtures/assemble.js';

/** An image of uncompressed in-memory layers, with the given platform and a marker in its config. */
export function testImage(layers: Buffer[], platform: { architecture?: string; variant?: string; marker?: string } = {}): Image {
  const diffIds = layers.map((layer) => sha256(layer));
  const rawConfig = Buffer.from(
    JSON.stringify({
      architecture: platform.architecture ?? 'amd64',
      ...(platform.variant ? { variant: platform.variant } : {}),
      os: 'linux',
      created: '1970-01-01T00:00:01Z',
      config: { Env: ['PATH=/bin'], Labels: { marker: platform.marker ?? 'test' } },
      rootfs: { type: 'layers', diff_ids: diffIds },
    }),
  );
  const imageLayers: Layer[] = layers.map((tar, i) => ({
    diffId: diffIds[i]!,
    blob: async () => ({ mediaType: MediaType.DockerLayer, digest: diffIds[i]!, size: tar.length }),
    openBlob: async () => Readable.from([tar]),
    openTar: async () => Readable.from([tar]).pipe(new DigestingStream({ expect: diffIds[i]! })),
  }));
  return { rawConfig, config: JSON.parse(rawConfig.toString()), configDigest: sha256(rawConfig), layers: imageLayers, repoTags: [] };
}

/** A layer with one file, `path`, holding `content`. */
export function fileLayer(path: string, content: string | Buffer): Promise<Buffer> {
  return layerTar([{ path, content }]);
}

/** PUT an OCI index naming `manifests` (digest, size, platform) under `tag`. Returns its digest. */
export async function putIndex(
  host: string,
  repository: string,
  tag: string,
  manifests: { digest: Digest; size: number; mediaType: string; platform: { os: string; architecture: string; variant?: string } }[],
): Promise<Digest> {
  const body = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests }));
  const response = await fetch(`http://${host}/v2/${repository}/manifests/${tag}`, { method: 'PUT', headers: { 'content-type': MediaType.OciIndex }, body });
  if (response.status !== 201) throw new Error(`PUT index: ${response.status} ${await response.text()}`);
  return sha256(body);
}
