// Reading OCI image layouts (a directory, or the same inside a tar): oci-layout, index.json, nested
// indexes, manifests, configs and layers, each blob checked against its descriptor.
import { DigestMismatchError, ImageFormatError, ImageReferenceError } from '../errors.js';
import { hex, sha256, type Digest } from '../image/digest.js';
import { REF_NAME_ANNOTATION } from '../image/descriptor.js';
import { MediaType, isIndex } from '../image/media-types.js';
import { isRepoTag } from '../image/reference.js';
import { checkLayerCount, loadConfig, loadedImage, type LoadedImage } from './loaded-image.js';
import { check, indexSchema, manifestSchema, type CheckedDescriptor } from './schemas.js';
import { parseJson, readFile, readJsonFile, type FileStore } from './store.js';
import { StoredLayer } from './stored-layer.js';
import type { Platform } from '../image/config.js';
import { hostArchitecture } from '../image/platform.js';
import { platformMatches, formatPlatform, type PlatformChoice } from './registry/platform.js';

/** containerd's (and newer docker save's) annotation with the full image name. */
const CONTAINERD_NAME_ANNOTATION = 'io.containerd.image.name';
const MAX_INDEX_DEPTH = 8;

const MANIFEST_TYPES = new Set<string>([MediaType.OciManifest, MediaType.DockerManifest]);
const LAYER_TYPES = new Set<string>([
  MediaType.OciLayer,
  MediaType.OciLayerGzip,
  MediaType.OciLayerZstd,
  MediaType.DockerLayer,
  MediaType.DockerLayerGzip,
  MediaType.DockerForeignLayerGzip,
  'application/vnd.oci.image.layer.nondistributable.v1.tar',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
]);

export function blobName(digest: Digest): string {
  return `blobs/sha256/${hex(digest)}`;
}


/** A top-level entry of index.json, with what its annotations say. */
interface Candidate {
  descriptor: CheckedDescriptor;
  /** the ref.name annotation of the top-level entry it came from */
  refName?: string;
  repoTags: string[];
}

export class OciLayoutReader {
  private constructor(
    readonly store: FileStore,
    private readonly entries: Candidate[],
  ) {}

  static async open(store: FileStore): Promise<OciLayoutReader> {
    const layout = (await readJsonFile(store, 'oci-layout')) as { imageLayoutVersion?: unknown } | null;
    if (typeof layout?.imageLayoutVersion !== 'string') {
      throw new ImageFormatError(`${store.source}: oci-layout: imageLayoutVersion is missing`, { source: store.source });
    }
    const index = check(indexSchema, await readJsonFile(store, 'index.json'), `${store.source}: index.json`);
    if (index.manifests.length === 0) throw new ImageFormatError(`${store.source}: index.json lists no images`, { source: store.source });
    const entries = index.manifests.map((descriptor): Candidate => {
      const refName = descriptor.annotations?.[REF_NAME_ANNOTATION];
      const fullName = descriptor.annotations?.[CONTAINERD_NAME_ANNOTATION];
      const repoTag = fullName && isRepoTag(fullName) ? fullName : refName && isRepoTag(refName) ? refName : undefined;
      return { descriptor, ...(refName !== undefined ? { refName } : {}), repoTags: repoTag ? [repoTag] : [] };
    });
    return new OciLayoutReader(store, entries);
  }

  /** The refs index.json names, for messages. */
  refNames(): string[] {
    return this.entries.flatMap((entry) => (entry.refName === undefined ? [] : [entry.refName]));
  }

  /**
   * One image: the entry whose ref name is `ref` (or whose tag part is), else, with several entries, the
   * one for linux on this host's architecture, else the first. With `platform`, the entry of that
   * platform, or an error naming the ones there are.
   */
  async image(ref?: string, platform?: PlatformChoice): Promise<LoadedImage> {
    let entries = this.entries;
    if (ref !== undefined) {
      entries = entries.filter((entry) => entry.refName !== undefined && refMatches(entry.refName, ref));
      if (entries.length === 0) {
        const known = this.refNames();
        throw new ImageReferenceError(
          `${this.store.source}: no image named "${ref}" in index.json (${known.length ? `it has: ${known.join(', ')}` : 'its images have no ref names'})`,
          { source: this.store.source },
        );
      }
    }
    const manifests: Candidate[] = [];
    for (const entry of entries) manifests.push(...(await this.expand(entry, 0)));
    const first = manifests[0];
    if (!first) throw new ImageFormatError(`${this.store.source}: index.json names no image manifests`, { source: this.store.source });
    if (manifests.length === 1 && platform === undefined) return this.load(first);
    const matches = (candidate: { os?: string; architecture?: string; variant?: string } | undefined): boolean =>
      platform === undefined ? isHost(candidate) : candidate?.architecture !== undefined && platformMatches({ ...candidate, os: candidate.os || 'linux', architecture: candidate.architecture }, platform);
    const host = manifests.find((entry) => matches(entry.descriptor.platform));
    if (host) return this.load(host);
    // Entries without a platform in their descriptor: their configs tell.
    for (const entry of manifests.filter((candidate) => !candidate.descriptor.platform)) {
      const image = await this.load(entry);
      if (matches(image.config)) return image;
    }
    if (platform !== undefined) {
      const offered = manifests.flatMap((entry) => (entry.descriptor.platform ? [formatPlatform(entry.descriptor.platform)] : []));
      throw new ImageReferenceError(`${this.store.source}: no image for ${formatPlatform(platform)}${offered.length ? ` (it has: ${offered.join(', ')})` : ''}`, { source: this.store.source });
    }
    return this.load(first);
  }

  /**
   * The images of the index that `ref` names (as image() selects the entry: the only one, else by ref), each
   * with the platform its index entry gives; undefined when that entry is a single image manifest.
   */
  async indexImages(ref?: string): Promise<{ platform: Platform; image: LoadedImage }[] | undefined> {
    const entries = ref === undefined ? this.entries : this.entries.filter((entry) => entry.refName !== undefined && refMatches(entry.refName, ref));
    if (entries.length !== 1 || !isIndex(entries[0]!.descriptor.mediaType)) return undefined;
    const result: { platform: Platform; image: LoadedImage }[] = [];
    for (const candidate of await this.expand(entries[0]!, 0)) {
      const image = await this.load(candidate);
      const given = candidate.descriptor.platform;
      const platform = given ? { os: given.os, architecture: given.architecture, ...(given.variant ? { variant: given.variant } : {}) } : { os: image.config.os || 'linux', architecture: image.config.architecture, ...(image.config.variant ? { variant: image.config.variant } : {}) };
      result.push({ platform, image });
    }
    return result;
  }

  /** Every top-level entry as one image (an index resolved to this host's platform, as image() does). */
  async images(): Promise<LoadedImage[]> {
    const images: LoadedImage[] = [];
    for (const entry of this.entries) {
      const manifests = await this.expand(entry, 0);
      const chosen = manifests.find((candidate) => isHost(candidate.descriptor.platform)) ?? manifests[0];
      if (chosen) images.push(await this.load(chosen));
    }
    return images;
  }

  /** An entry as the image manifests it leads to (nested indexes flattened; attestations skipped). */
  private async expand(entry: Candidate, depth: number): Promise<Candidate[]> {
    const { descriptor } = entry;
    if (MANIFEST_TYPES.has(descriptor.mediaType)) return [entry];
    if (!isIndex(descriptor.mediaType)) {
      throw new ImageFormatError(`${this.store.source}: index entry ${descriptor.digest} has media type ${descriptor.mediaType}, which is not an image manifest or index`, {
        source: this.store.source,
        digest: descriptor.digest,
      });
    }
    if (depth >= MAX_INDEX_DEPTH) throw new ImageFormatError(`${this.store.source}: indexes nested too deeply at ${descriptor.digest}`, { source: this.store.source });
    const nested = check(indexSchema, await this.readJsonBlob(descriptor, 'index'), `${this.store.source}: index ${descriptor.digest}`);
    const result: Candidate[] = [];
    for (const child of nested.manifests) {
      if (child.platform?.os === 'unknown') continue; // build attestations, not images
      result.push(...(await this.expand({ ...entry, descriptor: child }, depth + 1)));
    }
    return result;
  }

  private async load(entry: Candidate): Promise<LoadedImage> {
    const { source } = this.store;
    const manifestDigest = entry.descriptor.digest;
    const manifest = check(manifestSchema, await this.readJsonBlob(entry.descriptor, 'manifest'), `${source}: manifest ${manifestDigest}`);
    const rawConfig = await this.readBlob(manifest.config, 'config');
    const { config, configDigest } = loadConfig(rawConfig, `${source}: config ${manifest.config.digest}`, manifest.config.digest);
    checkLayerCount(config, manifest.layers.length, `${source}: manifest ${manifestDigest}`);
    const layers = manifest.layers.map((descriptor, i) => {
      if (!LAYER_TYPES.has(descriptor.mediaType)) {
        throw new ImageFormatError(`${source}: layer ${descriptor.digest} has media type ${descriptor.mediaType}, which dockvm cannot read`, {
          source,
          digest: descriptor.digest,
        });
      }
      return new StoredLayer({
        store: this.store,
        name: blobName(descriptor.digest),
        diffId: config.rootfs.diff_ids[i]!,
        descriptor: { mediaType: descriptor.mediaType, digest: descriptor.digest, size: descriptor.size },
      });
    });
    return loadedImage({ rawConfig, config, configDigest, layers, repoTags: entry.repoTags, origin: `${source}: manifest ${manifestDigest}` });
  }

  private async readBlob(descriptor: CheckedDescriptor, kind: string): Promise<Buffer> {
    const { source } = this.store;
    const what = `${source}: ${kind} ${descriptor.digest}`;
    const bytes = await readFile(this.store, blobName(descriptor.digest), `${kind} ${descriptor.digest}`);
    const digest = sha256(bytes);
    if (digest !== descriptor.digest || bytes.length !== descriptor.size) {
      throw new DigestMismatchError(
        `${what}: content does not match its descriptor: expected ${descriptor.digest} (${descriptor.size} bytes), got ${digest} (${bytes.length} bytes)`,
        { source, digest: descriptor.digest },
      );
    }
    return bytes;
  }

  private async readJsonBlob(descriptor: CheckedDescriptor, kind: string): Promise<unknown> {
    return parseJson(await this.readBlob(descriptor, kind), `${this.store.source}: ${kind} ${descriptor.digest}`);
  }
}

/** REF matches a ref name equal to it, or whose tag part is it ("1.0" matches "example.com/app:1.0"). */
export function refMatches(refName: string, ref: string): boolean {
  if (refName === ref) return true;
  const colon = refName.lastIndexOf(':');
  return colon > refName.lastIndexOf('/') && refName.slice(colon + 1) === ref;
}

function isHost(platform: { os?: string; architecture?: string } | undefined): boolean {
  return platform?.os === 'linux' && platform.architecture === hostArchitecture();
}
