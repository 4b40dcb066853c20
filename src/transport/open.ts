// Opening images by reference: the archive or layout is indexed once, images are picked from it, and
// close() releases what was opened (the temp file of a decompressed archive).
import { stat } from 'node:fs/promises';
import { ImageFormatError, ImageReferenceError, RegistryError } from '../errors.js';
import { normalizeRepoTag, parseImageReference, type ImageReference } from '../image/reference.js';
import { readLegacyImages, readManifestImages } from './docker-archive-reader.js';
import type { LoadedImage } from './loaded-image.js';
import { OciLayoutReader } from './oci-layout-reader.js';
import type { OpenedImage } from './opened-image.js';
import { openRegistryImage, type OpenRegistryImageOptions } from './registry/registry-image.js';
import { DirStore, TarStore, type FileStore } from './store.js';
import type { Platform } from '../image/config.js';
import { formatPlatform, platformMatches, wantedPlatform, type PlatformChoice } from './registry/platform.js';

export interface OpenImageOptions {
  /** pick the image with this name (with `tag`): fromImageName */
  name?: string;
  /** pick the image with this tag (with `name`): fromImageTag */
  tag?: string;
  /** for docker:// references: TLS, credentials, platform (defaults: HTTPS, the auth files, linux/host arch) */
  registry?: OpenRegistryImageOptions;
  /**
   * the platform wanted (dockvm shell --platform): picked from an index; an image of another platform
   * is an error (default: an index's entry for this host, else its first; any single image)
   */
  platform?: Platform;
}

/** Open one image: NAME:TAG from the reference or the options (both or neither), else the first (OCI: this host's platform). */
export async function openImage(reference: string | ImageReference, options: OpenImageOptions = {}): Promise<OpenedImage> {
  const ref = typeof reference === 'string' ? parseImageReference(reference) : reference;
  if (ref.transport === 'docker') return openRegistryImage(ref, { ...options.registry, ...(options.platform ? { platform: options.platform } : {}) });
  const wanted = pickNameTag(ref, options);
  const store = await openStore(ref);
  try {
    const platform = options.platform && wantedPlatform(options.platform);
    const image = await pickImage(store, ref, wanted, platform);
    if (platform && !platformMatches({ ...image.config, os: image.config.os || 'linux' }, platform)) {
      throw new ImageReferenceError(`${ref.text} is an image for ${formatPlatform({ ...image.config, os: image.config.os || 'linux' })}, not ${formatPlatform(platform)}`, { source: ref.text });
    }
    return opened(image, ref, once(() => store.close()));
  } catch (err) {
    await store.close();
    throw err;
  }
}

/**
 * The images of a multi-platform index in an OCI layout or archive (`oci:DIR[:REF]`, `oci-archive:PATH[:REF]`),
 * each with its platform; undefined when the reference names a single image (or is not an OCI layout).
 * The images share the opened layout: close() releases it, once every image is no longer read.
 */
export async function openIndex(reference: string | ImageReference): Promise<{ images: { platform: Platform; image: OpenedImage }[]; close(): Promise<void> } | undefined> {
  const ref = typeof reference === 'string' ? parseImageReference(reference) : reference;
  if (ref.transport !== 'oci' && ref.transport !== 'oci-archive') return undefined;
  const store = await openStore(ref);
  try {
    const found = await (await OciLayoutReader.open(store)).indexImages(ref.ref);
    if (!found) {
      await store.close();
      return undefined;
    }
    const close = once(() => store.close());
    return { images: found.map(({ platform, image }) => ({ platform, image: opened(image, ref, async () => undefined) })), close };
  } catch (err) {
    await store.close();
    throw err;
  }
}

/** Open every image of an archive or layout (what merge copies). */
export async function openImages(reference: string | ImageReference): Promise<{ images: OpenedImage[]; close(): Promise<void> }> {
  const ref = typeof reference === 'string' ? parseImageReference(reference) : reference;
  if (ref.transport === 'docker') {
    const image = await openRegistryImage(ref);
    return { images: [image], close: () => image.close() };
  }
  const store = await openStore(ref);
  try {
    const loaded = await allImages(store, ref);
    const close = once(() => store.close());
    // Each image holds the shared store; it is released when every image (or the group) is closed.
    let holders = loaded.length;
    const release = async () => {
      if (--holders === 0) await close();
    };
    return { images: loaded.map((image) => opened(image, ref, once(release))), close };
  } catch (err) {
    await store.close();
    throw err;
  }
}

async function openStore(ref: ImageReference): Promise<FileStore> {
  switch (ref.transport) {
    case 'docker':
      throw new RegistryError(
        `${ref.text}: reading from a registry is not supported yet; copy the image to an archive first (skopeo copy ${ref.text} docker-archive:image.tar)`,
        { source: ref.text },
      );
    case 'oci': {
      const path = ref.path!;
      const info = await stat(path).catch(() => undefined);
      if (!info?.isDirectory()) throw new ImageReferenceError(`${ref.text}: ${path} is not a directory (an OCI layout is a directory; for a tar use oci-archive:${path})`, { source: ref.text });
      return new DirStore(path);
    }
    case 'oci-archive':
    case 'docker-archive':
      return TarStore.open(ref.path!);
  }
}

type Format = 'manifest' | 'legacy' | 'oci';

/** What a store holds: a docker-archive (with manifest.json, or legacy), or an OCI layout. */
async function formatOf(store: FileStore, ref: ImageReference): Promise<Format> {
  if (ref.transport !== 'docker-archive') return 'oci';
  if (await store.has('manifest.json')) return 'manifest';
  if (await store.has('repositories')) return 'legacy';
  // An OCI layout in a tar, given as a plain path, is read as one.
  if ((await store.has('index.json')) && (await store.has('oci-layout'))) return 'oci';
  throw new ImageFormatError(`${store.source}: not a docker-archive: it has no manifest.json (nor the legacy repositories file)`, { source: store.source });
}

async function allImages(store: FileStore, ref: ImageReference): Promise<LoadedImage[]> {
  const format = await formatOf(store, ref);
  if (format === 'manifest') return readManifestImages(store);
  if (format === 'legacy') return readLegacyImages(store);
  return (await OciLayoutReader.open(store)).images();
}

async function pickImage(store: FileStore, ref: ImageReference, wanted: { name: string; tag: string } | undefined, platform?: PlatformChoice): Promise<LoadedImage> {
  if ((await formatOf(store, ref)) === 'oci') {
    const reader = await OciLayoutReader.open(store);
    if (ref.ref !== undefined) return reader.image(ref.ref, platform);
    if (!wanted) return reader.image(undefined, platform);
    // An OCI ref name may be a full "name:tag" or only the tag.
    return reader.image(`${wanted.name}:${wanted.tag}`, platform).catch((err: unknown) => {
      if (err instanceof ImageReferenceError) return reader.image(wanted.tag, platform);
      throw err;
    });
  }
  const images = await allImages(store, ref);
  if (ref.index !== undefined) {
    const image = images[ref.index];
    if (!image) throw new ImageReferenceError(`${ref.text}: the archive has ${images.length} image(s); there is no @${ref.index}`, { source: ref.text });
    return image;
  }
  if (!wanted) return images[0]!;
  const target = normalizeRepoTag(`${wanted.name}:${wanted.tag}`);
  const image = images.find((candidate) => candidate.repoTags.some((tag) => normalizeRepoTag(tag) === target));
  if (!image) {
    const known = images.flatMap((candidate) => candidate.repoTags);
    throw new ImageReferenceError(
      `${store.source}: no image tagged ${wanted.name}:${wanted.tag} in the archive (${known.length ? `it has: ${known.join(', ')}` : 'its images have no tags'})`,
      { source: store.source },
    );
  }
  return image;
}

function pickNameTag(ref: ImageReference, options: OpenImageOptions): { name: string; tag: string } | undefined {
  if ((options.name === undefined) !== (options.tag === undefined)) {
    throw new ImageReferenceError(`${ref.text}: give both an image name and a tag to pick an image, or neither (got ${options.name === undefined ? 'only a tag' : 'only a name'})`, {
      source: ref.text,
    });
  }
  const fromRef = ref.transport === 'docker-archive' && ref.name !== undefined && ref.tag !== undefined ? { name: ref.name, tag: ref.tag } : undefined;
  const fromOptions = options.name !== undefined && options.tag !== undefined ? { name: options.name, tag: options.tag } : undefined;
  if (fromRef && fromOptions && normalizeRepoTag(`${fromRef.name}:${fromRef.tag}`) !== normalizeRepoTag(`${fromOptions.name}:${fromOptions.tag}`)) {
    throw new ImageReferenceError(`${ref.text}: names ${fromRef.name}:${fromRef.tag} but ${fromOptions.name}:${fromOptions.tag} was asked for`, { source: ref.text });
  }
  return fromRef ?? fromOptions;
}

function opened(image: LoadedImage, ref: ImageReference, close: () => Promise<void>): OpenedImage {
  return Object.freeze({
    rawConfig: image.rawConfig,
    config: image.config,
    configDigest: image.configDigest,
    layers: image.layers,
    repoTags: image.repoTags,
    reference: ref.text,
    close,
  });
}

function once(action: () => Promise<void>): () => Promise<void> {
  let done: Promise<void> | undefined;
  return () => (done ??= action());
}
