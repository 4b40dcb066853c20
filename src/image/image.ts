// The image model: small interfaces in the style of go-containerregistry. Transports produce and
// consume these; operations return new images and never edit their input. Layers are lazy and
// re-openable: each open() starts a fresh stream, verified against its digest while it flows.
import type { Readable } from 'node:stream';
import type { Digest } from './digest.js';
import type { ImageConfig } from './config.js';

export interface Layer {
  /** sha256 of the uncompressed tar (the config's rootfs.diff_ids entry) */
  readonly diffId: Digest;
  /** the blob as stored or to be pushed: its media type, digest and size (may hash the blob once, then cached) */
  blob(): Promise<{ mediaType: string; digest: Digest; size: number }>;
  /** the stored blob's bytes (compressed or not), verified against blob().digest */
  openBlob(): Promise<Readable>;
  /** the uncompressed tar, verified against diffId */
  openTar(): Promise<Readable>;
  /**
   * Where the uncompressed tar lies inside a local file, when it does (an uncompressed layer in a plain
   * archive or layout), so that readers can seek to entries; undefined otherwise. `hashed`: the diff_id
   * was computed from these very bytes as this process wrote them (a layer it has just built), so a
   * reader by position need not hash them again.
   */
  localTar?(): Promise<{ path: string; offset: number; size: number; hashed?: boolean } | undefined>;
  /**
   * The uncompressed tar's size and a stream of it, when both can be had before the tar is stored
   * anywhere (a layer downloading: registry/live-tar.ts), so that an archive writer streams it in
   * instead of spooling it first; undefined otherwise. The stream checks the size it was given.
   */
  streamedTar?(): Promise<{ size: number; open: () => Promise<Readable> } | undefined>;
}

export interface Image {
  /** the config exactly as stored: its sha256 is the image ID / config digest */
  readonly rawConfig: Buffer;
  readonly config: ImageConfig;
  readonly configDigest: Digest;
  /** bottom layer first */
  readonly layers: readonly Layer[];
  /** "name:tag" references this image is known by (docker-archive RepoTags, OCI ref names) */
  readonly repoTags: readonly string[];
}

/** Each layer once (by diff_id), in the order first seen: an image may list a layer twice; archives and registries hold it once. */
export function distinctLayers(layers: Iterable<Layer>): Layer[] {
  const seen = new Map<Digest, Layer>();
  for (const layer of layers) if (!seen.has(layer.diffId)) seen.set(layer.diffId, layer);
  return [...seen.values()];
}
