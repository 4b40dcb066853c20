// The Image the readers return: a config read and verified up front, layers lazy.
import { DigestMismatchError, ImageFormatError } from '../errors.js';
import { sha256, type Digest } from '../image/digest.js';
import type { Image, Layer } from '../image/image.js';
import type { ImageConfig } from '../image/config.js';
import { parseJson } from './store.js';
import { checkConfig } from './schemas.js';

export interface LoadedImage extends Image {
  /** where the image was found, for messages: "img.tar", "img.tar (manifest.json [1])" */
  readonly origin: string;
}

/** Parse and check a config; with `expect`, its bytes must hash to that digest. */
export function loadConfig(raw: Buffer, what: string, expect?: Digest): { config: ImageConfig; configDigest: Digest } {
  const configDigest = sha256(raw);
  if (expect && expect !== configDigest) {
    throw new DigestMismatchError(`${what}: content does not match its digest: expected ${expect}, got ${configDigest}`, {
      source: what,
      digest: expect,
    });
  }
  const config = checkConfig(parseJson(raw, what), what);
  return { config, configDigest };
}

/** Check that a manifest and its config agree on the number of layers. */
export function checkLayerCount(config: ImageConfig, layerCount: number, what: string): void {
  const diffIds = config.rootfs.diff_ids.length;
  if (diffIds !== layerCount) {
    throw new ImageFormatError(`${what}: the manifest lists ${layerCount} layers but the config's rootfs.diff_ids has ${diffIds}`, {
      source: what,
    });
  }
}

export function loadedImage(fields: {
  rawConfig: Buffer;
  config: ImageConfig;
  configDigest: Digest;
  layers: Layer[];
  repoTags: string[];
  origin: string;
}): LoadedImage {
  return Object.freeze({ ...fields, layers: Object.freeze([...fields.layers]), repoTags: Object.freeze([...fields.repoTags]) });
}
