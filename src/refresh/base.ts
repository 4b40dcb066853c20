// What a spec's base image is right now, as a digest, without downloading it: a registry tag is resolved
// with one HEAD request (a reference that pins a digest needs none); a local archive or layout is opened
// and named by its config digest. Each distinct base is resolved once per run, however many specs share it.
import { parseImageReference } from '../image/reference.js';
import { openImage } from '../transport/open.js';
import { resolveDigest, type RegistryOptions } from '../transport/registry/index.js';
import type { BuildSpec } from '../spec/load.js';

export interface ResolvedBase {
  /** the digest the base resolves to now */
  digest: string;
  /**
   * fromImage for the build, naming exactly what was resolved: docker://HOST/REPO@sha256:… for a
   * registry base; the archive or layout itself otherwise (its config digest is checked by the build).
   */
  pinned: string;
  /** true for docker:// bases */
  registry: boolean;
}

export class BaseResolver {
  readonly #cache = new Map<string, Promise<ResolvedBase>>();

  /** `registryOptions(registry)`: the TLS setting and credentials to use for one registry host. */
  constructor(private readonly registryOptions: (registry: string) => RegistryOptions) {}

  /** The spec's base now; null for FROM scratch. Concurrent callers for one base share one lookup. */
  resolve(spec: BuildSpec): Promise<ResolvedBase> | null {
    if (spec.fromImage === null) return null;
    const key = JSON.stringify([spec.fromImage, spec.fromImageName, spec.fromImageTag]);
    let pending = this.#cache.get(key);
    if (!pending) {
      pending = this.#lookUp(spec.fromImage, spec.fromImageName, spec.fromImageTag);
      this.#cache.set(key, pending);
    }
    return pending;
  }

  async #lookUp(fromImage: string, name: string | null, tag: string | null): Promise<ResolvedBase> {
    const ref = parseImageReference(fromImage);
    if (ref.transport === 'docker') {
      const repository = `docker://${ref.name}`;
      if (ref.digest !== undefined) return { digest: ref.digest, pinned: `${repository}@${ref.digest}`, registry: true };
      const { digest } = await resolveDigest(ref, this.registryOptions(ref.registry!));
      return { digest, pinned: `${repository}@${digest}`, registry: true };
    }
    const image = await openImage(ref, name !== null && tag !== null ? { name, tag } : {});
    try {
      return { digest: image.configDigest, pinned: fromImage, registry: false };
    } finally {
      await image.close();
    }
  }
}
