// The images a build reads (FROM bases, COPY --from=IMAGE, mount from=IMAGE), each opened once and kept
// open until the build ends. `--build-context NAME=IMAGE` stands an image in for a name, as BuildKit's named
// contexts do (FROM debian:bookworm built over a local archive: NAME=docker-archive:debian.tar).
// --creds are for the registries the build pushes to; a base from another registry gets only what the
// auth files say about it, never those credentials.
import { ImageReferenceError, UsageError } from '../errors.js';
import type { Platform } from '../image/config.js';
import { normalizeRepoTag, parseImageReference } from '../image/reference.js';
import type { BaseImage, BaseRequest } from '../frontend/containerfile/index.js';
import { openImage, type OpenedImage } from '../transport/index.js';
import type { RegistryOptions } from '../transport/registry/index.js';

export class ImageSource {
  readonly #opened = new Map<string, Promise<OpenedImage>>();
  readonly #overrides: Map<string, string>;

  /** `overrides`: NAME → IMAGE (any dockvm IMAGE reference); `credsFor`: the registry hosts `registry.creds` belongs to */
  constructor(
    overrides: Readonly<Record<string, string>> = {},
    private readonly registry: RegistryOptions = {},
    private readonly credsFor: ReadonlySet<string> = new Set(),
  ) {
    this.#overrides = new Map();
    for (const [name, ref] of Object.entries(overrides)) {
      try {
        parseImageReference(ref);
      } catch (err) {
        if (err instanceof ImageReferenceError) throw new UsageError(`--build-context ${name}=${ref}: ${err.message}`, { cause: err });
        throw err;
      }
      this.#overrides.set(nameKey(name), ref);
    }
  }

  /** The reference actually opened for `ref`: its --build-context stand-in, else itself. */
  resolve(ref: string): string {
    if (!ref.startsWith('docker://')) return ref;
    return this.#overrides.get(nameKey(ref.slice('docker://'.length))) ?? ref;
  }

  /**
   * The image `ref` names (a FROM or --from reference as the plan writes it), opened once: asked again
   * for the platform it turned out to be (the plan names every stage's), the same image.
   */
  async open(ref: string, platform?: Platform): Promise<OpenedImage> {
    const actual = this.resolve(ref);
    const unasked = this.#opened.get(actual);
    if (platform && unasked) {
      const image = await unasked;
      if (image.config.os === platform.os && image.config.architecture === platform.architecture && (platform.variant ?? '') === (image.config.variant ?? '')) return image;
    }
    const key = platform ? `${actual}\0${platform.os}/${platform.architecture}/${platform.variant ?? ''}` : actual;
    let opened = this.#opened.get(key);
    if (!opened) {
      const { creds, ...shared } = this.registry;
      const host = actual.startsWith('docker://') ? parseImageReference(actual).registry : undefined;
      const withCreds = creds !== undefined && host !== undefined && this.credsFor.has(host) ? { ...shared, creds } : shared;
      // an image of another platform than the one asked for is an error here, before any VM runs its programs
      opened = openImage(actual, { registry: withCreds, ...(platform ? { platform } : {}) });
      this.#opened.set(key, opened);
      opened.catch(() => this.#opened.delete(key));
    }
    return opened;
  }

  /** The front end's resolveBase hook: a base image's config, author and platform. */
  readonly resolveBase = async (request: BaseRequest): Promise<BaseImage> => {
    const image = await this.open(request.ref, request.platform);
    const { config } = image;
    const platform: Platform = { os: config.os, architecture: config.architecture, ...(config.variant ? { variant: config.variant } : {}) };
    return { config: structuredClone(config.config ?? {}), ...(config.author ? { author: config.author } : {}), platform };
  };

  async close(): Promise<void> {
    const all = [...this.#opened.values()];
    this.#opened.clear();
    await Promise.all(all.map(async (opened) => (await opened.catch(() => undefined))?.close()));
  }
}

/** A registry name compared as Docker compares them: docker.io/library/ implied, :latest when untagged. */
function nameKey(name: string): string {
  const at = name.indexOf('@');
  const path = at < 0 ? name : name.slice(0, at);
  const lastSlash = path.lastIndexOf('/');
  const tagged = path.indexOf(':', lastSlash + 1) >= 0 || at >= 0 ? name : `${name}:latest`;
  return normalizeRepoTag(tagged.toLowerCase());
}
