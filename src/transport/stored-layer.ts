// A layer whose blob is a file of a FileStore (an entry of an archive, a file of a layout). Every stream
// it opens is verified while it flows: the blob against its digest, the tar against its diff_id.
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { ImageFormatError } from '../errors.js';
import { DigestingStream, type Digest } from '../image/digest.js';
import type { Layer } from '../image/image.js';
import { MediaType, layerCompression, type Compression } from '../image/media-types.js';
import { printable } from '../layer/tar.js';
import { missing, type FileStore, type LocalRange } from './store.js';
import { chain, describeFailure, drain, openRange, readRange, sniffCompression } from './streams.js';

export interface StoredLayerOptions {
  store: FileStore;
  /** the file's name in the store */
  name: string;
  diffId: Digest;
  /** the blob's descriptor when a manifest gives one (OCI); otherwise the blob is sniffed and hashed */
  descriptor?: { mediaType: string; digest: Digest; size: number };
  /** a digest the blob's name claims (blobs/sha256/<hex>), checked while reading */
  namedDigest?: Digest;
}

interface BlobInfo {
  mediaType: string;
  digest: Digest;
  size: number;
}

export class StoredLayer implements Layer {
  readonly diffId: Digest;
  readonly #options: StoredLayerOptions;
  readonly #what: string;
  #range: Promise<LocalRange> | undefined;
  #compression: Promise<Compression> | undefined;
  #blob: Promise<BlobInfo> | undefined;

  constructor(options: StoredLayerOptions) {
    this.#options = options;
    this.diffId = options.diffId;
    this.#what = `${options.store.source}: layer ${printable(options.name)}`;
  }

  /** The file's location; a file the manifest names but the store lacks is an ImageFormatError. */
  range(): Promise<LocalRange> {
    this.#range ??= (async () => {
      const range = await this.#options.store.locate(this.#options.name);
      if (!range) throw missing(this.#options.store, this.#options.name, `layer ${this.diffId}`);
      return range;
    })();
    return this.#range;
  }

  /** From the media type when a descriptor gives one, else from the blob's first bytes. */
  compression(): Promise<Compression> {
    this.#compression ??= (async () => {
      const { descriptor } = this.#options;
      if (descriptor) return layerCompression(descriptor.mediaType);
      const range = await this.range();
      const sniffed = sniffCompression(await readRange(range.path, range.offset, Math.min(6, range.size)));
      if (sniffed === 'bzip2' || sniffed === 'xz') {
        throw new ImageFormatError(`${this.#what} is ${sniffed}-compressed, which container images do not use`, {
          source: this.#options.store.source,
          entry: this.#options.name,
        });
      }
      return sniffed;
    })();
    return this.#compression;
  }

  blob(): Promise<BlobInfo> {
    this.#blob ??= (async () => {
      const { descriptor, namedDigest } = this.#options;
      if (descriptor) return { ...descriptor };
      const range = await this.range();
      const compression = await this.compression();
      const expect = compression === 'none' ? this.diffId : namedDigest;
      // Hash the stored bytes once; verified against diff_id (uncompressed) or the digest its name claims.
      const digester = new DigestingStream({ expect, expectSize: range.size, what: this.#what });
      await drain(chain(openRange(range.path, range.offset, range.size), [digester], describeFailure(this.#what)));
      const mediaType = compression === 'gzip' ? MediaType.DockerLayerGzip : compression === 'zstd' ? MediaType.OciLayerZstd : MediaType.DockerLayer;
      return { mediaType, digest: digester.digest, size: range.size };
    })();
    return this.#blob;
  }

  async openBlob(): Promise<Readable> {
    const range = await this.range();
    const { descriptor, namedDigest } = this.#options;
    // Without a digest to check against, hash the blob first (once; cached).
    const expect = descriptor?.digest ?? namedDigest ?? (await this.blob()).digest;
    const digester = new DigestingStream({ expect, expectSize: descriptor?.size ?? range.size, what: this.#what });
    return chain(openRange(range.path, range.offset, range.size), [digester], describeFailure(this.#what));
  }

  async openTar(): Promise<Readable> {
    const compression = await this.compression();
    if (compression === 'zstd') {
      throw new ImageFormatError(
        `${this.#what} is zstd-compressed, which dockvm cannot read yet; convert the image with skopeo copy --dest-compress-format gzip`,
        { source: this.#options.store.source, entry: this.#options.name },
      );
    }
    const range = await this.range();
    const { descriptor, namedDigest } = this.#options;
    const source = openRange(range.path, range.offset, range.size);
    if (compression === 'none') {
      const check = new DigestingStream({ expect: this.diffId, expectSize: descriptor?.size ?? range.size, what: this.#what });
      return chain(source, [check], describeFailure(this.#what));
    }
    const checkTar = new DigestingStream({ expect: this.diffId, what: `${this.#what} (uncompressed)` });
    const expectBlob = descriptor?.digest ?? namedDigest;
    const checkBlob = new DigestingStream({ expect: expectBlob, expectSize: descriptor?.size, what: this.#what });
    return chain(source, [checkBlob, createGunzip(), checkTar], describeFailure(this.#what));
  }

  async localTar(): Promise<LocalRange | undefined> {
    if ((await this.compression()) !== 'none') return undefined;
    return this.range();
  }
}
