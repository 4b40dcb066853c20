// Writing OCI image layouts: blobs/sha256/, a manifest, index.json naming it by ref, oci-layout. Layers
// are stored gzip-compressed (deterministically: fixed level, no timestamp or name); a layer that is
// already compressed is copied as it is, so its digest is kept. Several platforms' images are written
// as an image index (one manifest per platform, each labelled with its config's platform), which
// index.json names by the ref, as skopeo and buildah write a manifest list into a layout.
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, readdir, rename, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { writeAtomically } from '../output.js';
import { DockvmError, ImageReferenceError } from '../errors.js';
import { DigestingStream, sha256, type Digest } from '../image/digest.js';
import type { Descriptor, Index, Manifest } from '../image/descriptor.js';
import { REF_NAME_ANNOTATION } from '../image/descriptor.js';
import type { Platform } from '../image/config.js';
import type { Image } from '../image/image.js';
import { MediaType, layerCompression } from '../image/media-types.js';
import { GZIP_LEVEL } from './docker-archive-writer.js';
import { blobName } from './oci-layout-reader.js';
import { check, indexSchema } from './schemas.js';
import { DirStore, readJsonFile } from './store.js';
import { chain, describeFailure } from './streams.js';

export interface WriteOciLayoutOptions {
  /** the org.opencontainers.image.ref.name to give the image in index.json ("latest", "app:1.0") */
  ref?: string;
  /** index.json names this image alone: the layout's other entries are dropped (their blobs stay) */
  alone?: boolean;
}

const REF_RE = /^[A-Za-z0-9]+(?:[-._:@/+]+[A-Za-z0-9]+)*$/;

/**
 * Write `image` into the OCI layout `dir`. A new directory appears whole or not at all; an existing
 * layout gets the image added (an entry with the same ref is replaced) and index.json is rewritten last.
 */
export async function writeOciLayout(image: Image, dir: string, options: WriteOciLayoutOptions = {}): Promise<Descriptor> {
  return writeLayout(dir, options, (root) => storeImage(root, image));
}

export interface WrittenIndex {
  /** the index's descriptor, as index.json names it */
  index: Descriptor;
  /** each image's manifest, in the order given, with its platform */
  manifests: Descriptor[];
}

/**
 * Write `images` (one per platform) into the OCI layout `dir` as one image index named by the ref:
 * each manifest labelled with the os/architecture/variant of its config. Same rules as writeOciLayout.
 */
export async function writeOciIndex(images: readonly Image[], dir: string, options: WriteOciLayoutOptions = {}): Promise<WrittenIndex> {
  const manifests: Descriptor[] = [];
  const index = await writeLayout(dir, options, async (root) => {
    for (const image of images) manifests.push({ ...(await storeImage(root, image)), platform: platformOf(image) });
    const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests } satisfies Index));
    const digest = sha256(bytes);
    await writeBlob(root, digest, bytes);
    return { mediaType: MediaType.OciIndex, digest, size: bytes.length };
  });
  return { index, manifests };
}

/** An image's platform as an index entry gives it (config.md: architecture, os, variant). */
function platformOf(image: Image): Platform {
  const { os, architecture, variant } = image.config;
  return { architecture, os: os || 'linux', ...(variant ? { variant } : {}) };
}

/** Store what `store` writes into the layout at `dir` and name the descriptor it returns in index.json by the ref. */
async function writeLayout(dir: string, options: WriteOciLayoutOptions, store: (root: string) => Promise<Descriptor>): Promise<Descriptor> {
  if (options.ref !== undefined && !REF_RE.test(options.ref)) {
    throw new ImageReferenceError(`"${options.ref}" is not a valid OCI ref name`, { source: dir });
  }
  try {
    const existing = await layoutState(dir);
    if (existing !== 'layout') {
      // A new (or empty) directory is built beside its place and renamed into it when complete.
      if (existing === 'empty') await rmdir(dir);
      return await writeAtomically(dir, async (temp) => {
        await mkdir(temp);
        return writeInto(temp, store, options, []);
      });
    }
    const manifests = check(indexSchema, await readJsonFile(new DirStore(dir), 'index.json'), `${dir}: index.json`).manifests;
    return await writeInto(dir, store, options, manifests as Descriptor[]);
  } catch (err) {
    if (err instanceof DockvmError) throw err;
    throw new DockvmError(`${dir}: cannot write the OCI layout: ${(err as Error).message}`, { source: dir, cause: err });
  }
}

async function layoutState(dir: string): Promise<'absent' | 'empty' | 'layout'> {
  const info = await stat(dir).catch(() => undefined);
  if (!info) return 'absent';
  if (!info.isDirectory()) throw new ImageReferenceError(`${dir} exists and is not a directory; an OCI layout is a directory`, { source: dir });
  const names = await readdir(dir);
  if (names.length === 0) return 'empty';
  if (names.includes('oci-layout') && names.includes('index.json')) return 'layout';
  throw new ImageReferenceError(`${dir} exists and is not an OCI layout (no oci-layout and index.json); choose an empty or new directory`, { source: dir });
}

async function writeInto(root: string, store: (root: string) => Promise<Descriptor>, options: WriteOciLayoutOptions, manifests: Descriptor[]): Promise<Descriptor> {
  await mkdir(join(root, 'blobs', 'sha256'), { recursive: true });
  const stored = await store(root);
  const descriptor: Descriptor = { ...stored };
  if (options.ref !== undefined) descriptor.annotations = { [REF_NAME_ANNOTATION]: options.ref };
  const kept = options.alone ? [] : manifests.filter((entry) => options.ref === undefined || entry.annotations?.[REF_NAME_ANNOTATION] !== options.ref);
  const index: Index = { schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [...kept, descriptor] };
  await writeFile(join(root, 'oci-layout'), `${JSON.stringify({ imageLayoutVersion: '1.0.0' })}`);
  await writeAtomically(join(root, 'index.json'), (temp) => writeFile(temp, JSON.stringify(index)));
  return stored;
}

/** An image's config, layers and manifest as blobs of the layout at `root`; the manifest's descriptor. */
async function storeImage(root: string, image: Image): Promise<Descriptor> {
  await writeBlob(root, image.configDigest, image.rawConfig);
  const layers: Descriptor[] = [];
  for (const layer of image.layers) {
    const blob = await layer.blob();
    const compression = layerCompression(blob.mediaType);
    if (compression === 'none') {
      layers.push(await storeStream(root, MediaType.OciLayerGzip, () => layer.openTar(), true));
    } else {
      const mediaType = compression === 'zstd' ? MediaType.OciLayerZstd : MediaType.OciLayerGzip;
      if (await hasBlob(root, blob.digest, blob.size)) layers.push({ mediaType, digest: blob.digest, size: blob.size });
      else layers.push(await storeStream(root, mediaType, () => layer.openBlob(), false));
    }
  }
  const manifest: Manifest = {
    schemaVersion: 2,
    mediaType: MediaType.OciManifest,
    config: { mediaType: MediaType.OciConfig, digest: image.configDigest, size: image.rawConfig.length },
    layers,
  };
  const manifestBytes = Buffer.from(JSON.stringify(manifest));
  const manifestDigest = sha256(manifestBytes);
  await writeBlob(root, manifestDigest, manifestBytes);
  return { mediaType: MediaType.OciManifest, digest: manifestDigest, size: manifestBytes.length };
}

async function hasBlob(root: string, digest: Digest, size: number): Promise<boolean> {
  const info = await stat(join(root, blobName(digest))).catch(() => undefined);
  return info?.isFile() === true && info.size === size;
}

async function writeBlob(root: string, digest: Digest, data: Buffer): Promise<void> {
  if (await hasBlob(root, digest, data.length)) return;
  await writeAtomically(join(root, blobName(digest)), (temp) => writeFile(temp, data));
}

/** Stream a blob into the layout (gzipping it first when `compress`), named by the digest it turns out to have. */
async function storeStream(root: string, mediaType: string, open: () => Promise<Readable>, compress: boolean): Promise<Descriptor> {
  const temp = join(root, 'blobs', 'sha256', `.tmp-${randomBytes(6).toString('hex')}`);
  try {
    const digester = new DigestingStream();
    const input = await open();
    const stream = compress ? chain(input, [createGzip({ level: GZIP_LEVEL })], describeFailure(root)) : input;
    await pipeline(stream, digester, createWriteStream(temp));
    const target = join(root, blobName(digester.digest));
    await rename(temp, target);
    return { mediaType, digest: digester.digest, size: digester.size };
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
}
