// A layer that is an uncompressed tar in a local file (a layer dockvm has just built): its blob is its
// tar, so digest = diff_id. Streams are verified against the diff_id like any other layer's; a copy by
// position (the docker-archive writer) skips hashing a layer this process wrote and hashed as it did.
import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { DigestingStream, type Digest } from './digest.js';
import type { Layer } from './image.js';
import { MediaType } from './media-types.js';

export class FileLayer implements Layer {
  constructor(
    readonly path: string,
    readonly diffId: Digest,
    readonly size: number,
    /** the file was written by this process, diffId computed from its bytes as they were written */
    private readonly hashedWhenWritten = false,
  ) {}

  async blob(): Promise<{ mediaType: string; digest: Digest; size: number }> {
    return { mediaType: MediaType.OciLayer, digest: this.diffId, size: this.size };
  }

  async openBlob(): Promise<Readable> {
    return this.openTar();
  }

  async openTar(): Promise<Readable> {
    const verify = new DigestingStream({ expect: this.diffId, expectSize: this.size, what: `layer ${this.path}` });
    const file = createReadStream(this.path);
    file.on('error', (err) => verify.destroy(err));
    return file.pipe(verify);
  }

  async localTar(): Promise<{ path: string; offset: number; size: number; hashed: boolean }> {
    return { path: this.path, offset: 0, size: this.size, hashed: this.hashedWhenWritten };
  }
}
