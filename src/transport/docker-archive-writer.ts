// Writing docker-archives that `docker load`, `podman load` and skopeo read, byte-identical for the same
// images: one uncompressed `<diffid-hex>.tar` per distinct layer, one `<config-hex>.json` per image,
// manifest.json and repositories, in that order (layers first, as docker save writes them, so that an
// archive can be begun before its last layer exists); every entry mtime 0, mode 0644, owner 0:0.
import { channel } from 'node:diagnostics_channel';
import { createReadStream, createWriteStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Duplex, Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { createTempDir, type TempDir } from '../cleanup.js';
import { writeAtomically, writeOutput } from '../output.js';
import { DockvmError, ImageReferenceError } from '../errors.js';
import { DigestingStream, hex, type Digest } from '../image/digest.js';
import { distinctLayers, type Image, type Layer } from '../image/image.js';
import { layerCompression } from '../image/media-types.js';
import { isRepoTag, splitNameTag } from '../image/reference.js';
import { checkTarEntries } from './entry-check.js';
import { TarOutput } from './tar-output.js';
import { PositionalFile, type Piece } from './positional-archive.js';
import type { LocalRange } from './store.js';
import { encodeHeader } from '../layer/tar.js';
import { chain, describeFailure, openRange } from './streams.js';
import { verifyLocalTars, type LocalTarToCheck, type Verification } from '../layer/verify-in-place.js';

export interface ArchiveImage {
  image: Image;
  /** "name:tag" references to load it as */
  tags: readonly string[];
  /** names where the image came from in messages (an input archive) */
  source?: string;
}

export interface WriteDockerArchiveOptions {
  /** gzip the archive (deterministic: fixed level, no timestamp or name) */
  gzip?: boolean;
  /** parse every layer as untrusted input while copying it (no "..", no absolute paths) */
  checkEntries?: boolean;
  /**
   * Hash the archive as it is written and call this with its sha256 (hex) before it takes its place;
   * throwing leaves nothing written (pull --sha256). Saves reading the archive back to hash it.
   */
  beforeCommit?: (sha256: string) => void | Promise<void>;
}

/** Layers read in place from this size on are hashed on a worker thread (smaller ones: not worth a thread). */
const VERIFY_ON_WORKER = 16 * 1024 * 1024;
/** Archives whose layers all lie in local files, from this size on, are written by position. */
const POSITIONAL_MIN = 16 * 1024 * 1024;

/**
 * Which way each archive is written, as `{ path, byPosition }` (node:diagnostics_channel: nothing is
 * published unless someone subscribes). The two ways give the same bytes; this says which one ran.
 */
export const archiveWayChannel = channel('dockvm:docker-archive-way');

/** zlib's default level, fixed here so that output does not change with Node's defaults. */
export const GZIP_LEVEL = 6;

interface PlannedImage {
  image: Image;
  tags: string[];
  source?: string | undefined;
}

/** Write a docker-archive to `path` atomically (nothing is left on failure), or to stdout when path is "-". */
export async function writeDockerArchive(images: readonly ArchiveImage[], path: string, options: WriteDockerArchiveOptions = {}): Promise<void> {
  const planned = plan(images);
  const layerSource = new Map<Digest, string>();
  for (const { image, source } of planned) for (const layer of image.layers) if (source && !layerSource.has(layer.diffId)) layerSource.set(layer.diffId, source);
  const archive = beginDockerArchive(path, planned.flatMap(({ image }) => image.layers), options, (layer) => `${layerSource.get(layer.diffId) ?? 'image'}: layer ${layer.diffId}`);
  await archive.finish(images);
}

/** A docker-archive begun with its first layers, before the images are complete: finish() or abort(). */
export interface DockerArchiveWriter {
  /** Write the rest of `images` (their layers start with the ones begun with) and put the archive in place. */
  finish(images: readonly ArchiveImage[]): Promise<void>;
  /** Stop, leaving nothing written. */
  abort(): Promise<void>;
}

/** What finish() adds: the layers after the first ones, then the configs, manifest.json and repositories. */
interface Rest {
  layers: Layer[];
  files: [string, Buffer][];
}

class Aborted extends DockvmError {}

/**
 * Begin a docker-archive with `firstLayers` (each once), written at once: run-as-root copies its base
 * layers in while its VM builds the new one. Layers come first in the archive for this (as in docker
 * save's), then the configs, manifest.json and repositories, which name the layers.
 */
export function beginDockerArchive(
  path: string,
  firstLayers: readonly Layer[],
  options: WriteDockerArchiveOptions = {},
  what: (layer: Layer) => string = (layer) => `layer ${layer.diffId}`,
): DockerArchiveWriter {
  const first = distinctLayers(firstLayers);
  let provide!: (rest: Rest) => void;
  let refuse!: (err: unknown) => void;
  const rest = new Promise<Rest>((resolve, reject) => {
    provide = resolve;
    refuse = reject;
  });
  let abandoned = false;
  rest.catch(() => {
    abandoned = true;
  });
  // Everything, even finding where the layers lie (a registry layer downloads for that), happens in
  // the background: begin returns at once.
  const writing = (async () => {
    const positional = path !== '-' && !options.gzip && !options.beforeCommit && !options.checkEntries ? await localTars(first, () => abandoned) : undefined;
    if (abandoned) await rest;
    if (archiveWayChannel.hasSubscribers) archiveWayChannel.publish({ path, byPosition: positional !== undefined });
    await withSpool((spoolDir) =>
      positional ? writeByPosition(path, first, positional, rest, what, spoolDir) : writeStreamed(path, first, rest, options, what, spoolDir),
    );
  })().catch((err: unknown) => {
    if (err instanceof DockvmError) throw err;
    throw new DockvmError(`${path}: cannot write the archive: ${(err as Error).message}`, { source: path, cause: err });
  });
  writing.catch(() => undefined); // awaited by finish() or abort()
  return {
    finish: async (images) => {
      try {
        provide(planRest(images, first));
      } catch (err) {
        refuse(err);
        await writing.catch(() => undefined);
        throw err;
      }
      await writing;
    },
    abort: async () => {
      refuse(new Aborted(`${path}: abandoned`));
      await writing.catch(() => undefined);
    },
  };
}

function planRest(images: readonly ArchiveImage[], first: readonly Layer[]): Rest {
  const planned = plan(images);
  const layers = distinctLayers(planned.flatMap(({ image }) => image.layers));
  if (first.some((layer, i) => layers[i]?.diffId !== layer.diffId)) {
    throw new DockvmError('docker-archive: the images do not start with the layers the archive was begun with');
  }
  const manifest = planned.map(({ image, tags }) => ({
    Config: `${hex(image.configDigest)}.json`,
    RepoTags: tags,
    Layers: image.layers.map((layer) => `${hex(layer.diffId)}.tar`),
  }));
  return {
    layers: layers.slice(first.length),
    files: [
      ...planned.map(({ image }): [string, Buffer] => [`${hex(image.configDigest)}.json`, image.rawConfig]),
      ['manifest.json', Buffer.from(JSON.stringify(manifest))],
      ['repositories', Buffer.from(JSON.stringify(repositories(planned)))],
    ],
  };
}

/** Through a tar stream: any layer, gzip, hashing, entry checks, stdout. */
async function writeStreamed(
  path: string,
  first: readonly Layer[],
  rest: Promise<Rest>,
  options: WriteDockerArchiveOptions,
  what: (layer: Layer) => string,
  spoolDir: () => Promise<string>,
): Promise<void> {
  const { beforeCommit } = options;
  const hash = beforeCommit ? new DigestingStream() : undefined;
  const output = new TarOutput();
  let producing: Promise<void> | undefined;
  try {
    await writeOutput(path, () => {
      // Abandoned (abort, or finish with images that do not fit): stop now, not after the layer being copied.
      rest.catch((err: unknown) => output.fail(err));
      const produce = async () => {
        const verifications: Verification[] = [];
        const add = async (layer: Layer) => {
          const { size, open, verify } = await sizedTar(layer, what(layer), spoolDir);
          if (verify) verifications.push(verifyLocalTars([verify]));
          const body = options.checkEntries ? checkTarEntries(await open(), what(layer)) : await open();
          await output.addStream(fileEntry(`${hex(layer.diffId)}.tar`, size), body);
        };
        try {
          for (const layer of first) await add(layer);
          const { layers, files } = await rest;
          for (const layer of layers) await add(layer);
          for (const [name, data] of files) await output.add(fileEntry(name, data.length), data);
          // The archive gets its end only once every layer copied as it lay matched its diff_id.
          for (const verification of verifications) await verification.done;
        } finally {
          await Promise.all(verifications.map((verification) => verification.cancel()));
        }
      };
      producing = produce().then(
        () => output.finish(),
        (err: unknown) => output.fail(err),
      );
      const transforms: Duplex[] = [];
      if (options.gzip) transforms.push(createGzip({ level: GZIP_LEVEL }));
      if (hash) transforms.push(hash);
      return transforms.length === 0 ? output.stream : chain(output.stream, transforms, describeFailure(path));
    }, beforeCommit ? { beforeCommit: () => beforeCommit(hex(hash!.digest)) } : {});
  } catch (err) {
    // The file failed (a full disk, a missing directory): stop reading the layers too.
    output.fail(err);
    throw err;
  } finally {
    // The layers stop reading before the spool they may read from goes.
    await producing;
  }
}

/** By position (positional-archive.ts): the first layers lie in local files; a later one that does not is spooled. */
function writeByPosition(
  path: string,
  first: readonly Layer[],
  locals: LocalRange[],
  rest: Promise<Rest>,
  what: (layer: Layer) => string,
  spoolDir: () => Promise<string>,
): Promise<void> {
  return writeAtomically(path, async (temp) => {
    const file = await PositionalFile.create(temp);
    try {
      await file.append(first.flatMap((layer, i) => layerPieces(layer, locals[i]!, what(layer))));
      const { layers, files } = await rest;
      const pieces: Piece[] = [];
      for (const layer of layers) {
        const local = (await layer.localTar?.()) ?? (await spoolTar(layer, spoolDir));
        pieces.push(...layerPieces(layer, local, what(layer)));
      }
      for (const [name, data] of files) pieces.push({ kind: 'bytes', data: Buffer.concat([...encodeHeader(fileEntry(name, data.length)), data, padding(data.length)]) });
      pieces.push({ kind: 'bytes', data: Buffer.alloc(1024) });
      await file.append(pieces);
    } catch (err) {
      await file.abort();
      throw err;
    }
    await file.close();
  });
}

/** Run `write` with a spool directory for layers that must be written out first: made on first use, removed after. */
async function withSpool<T>(write: (spoolDir: () => Promise<string>) => Promise<T>): Promise<T> {
  let spool: TempDir | undefined;
  try {
    return await write(async () => (spool ??= await createTempDir('spool')).path);
  } finally {
    await spool?.remove();
  }
}

/** The layer's tar written out into the spool directory (a compressed layer is decompressed once). */
async function spoolTar(layer: Layer, spoolDir: () => Promise<string>): Promise<LocalRange> {
  const path = join(await spoolDir(), `${hex(layer.diffId)}.tar`);
  // openTar's stream checked the diff_id as the spool was written
  await pipeline(await layer.openTar(), createWriteStream(path));
  return { path, offset: 0, size: (await stat(path)).size, hashed: true };
}

/** A layer entry as pieces: its header, its bytes copied from where they lie, tar-stream's padding. */
function layerPieces(layer: Layer, local: LocalRange, what: string): Piece[] {
  return [
    { kind: 'bytes', data: Buffer.concat(encodeHeader(fileEntry(`${hex(layer.diffId)}.tar`, local.size))) },
    { kind: 'copy', ...local, diffId: layer.diffId, what },
    { kind: 'bytes', data: padding(local.size) },
  ];
}

function padding(size: number): Buffer {
  return Buffer.alloc(size % 512 === 0 ? 0 : 512 - (size % 512));
}

/** One entry per distinct config (tags of the same image merged); every tag well-formed and naming one image. */
function plan(images: readonly ArchiveImage[]): PlannedImage[] {
  const byConfig = new Map<Digest, PlannedImage>();
  const owner = new Map<string, Digest>();
  for (const { image, tags, source } of images) {
    const entry = byConfig.get(image.configDigest) ?? { image, tags: [], source };
    byConfig.set(image.configDigest, entry);
    for (const tag of tags) {
      if (!isRepoTag(tag)) throw new ImageReferenceError(`"${tag}" is not a valid image name:tag to store in an archive`, { source: tag });
      const previous = owner.get(tag);
      if (previous !== undefined && previous !== image.configDigest) {
        throw new ImageReferenceError(`tag ${tag} is given to two different images (${previous} and ${image.configDigest}); an archive can load only one`, {
          source: tag,
        });
      }
      owner.set(tag, image.configDigest);
      if (!entry.tags.includes(tag)) entry.tags.push(tag);
    }
  }
  return [...byConfig.values()];
}

/** The legacy `repositories` file: name → tag → top layer ID (here: the top layer's diff_id hex, its file's name). */
function repositories(images: PlannedImage[]): Record<string, Record<string, string>> {
  const result: Record<string, Record<string, string>> = {};
  for (const { image, tags } of images) {
    const top = image.layers[image.layers.length - 1];
    if (!top) continue;
    for (const tag of tags) {
      const { name, tag: tagPart } = splitNameTag(tag, tag);
      (result[name] ??= {})[tagPart!] = hex(top.diffId);
    }
  }
  return result;
}

/**
 * Where every layer's tar lies, when all lie in local files and are together worth a worker thread
 * (POSITIONAL_MIN): the archive is then written by position (positional-archive.ts). Else undefined.
 */
async function localTars(layers: readonly Layer[], abandoned: () => boolean = () => false): Promise<LocalRange[] | undefined> {
  if (layers.some((layer) => layer.localTar === undefined)) return undefined;
  const locals: LocalRange[] = [];
  for (const layer of layers) {
    if (abandoned()) return undefined;
    const local = await layer.localTar!();
    if (!local) return undefined;
    locals.push(local);
  }
  return locals.reduce((sum, local) => sum + local.size, 0) >= POSITIONAL_MIN ? locals : undefined;
}

function fileEntry(path: string, size: number) {
  return { path, type: 'file' as const, mode: 0o644, uid: 0, gid: 0, size, mtime: 0 };
}

/**
 * The uncompressed tar's size (a tar header needs it before the content) and a way to stream it. A layer
 * that can stream its tar with the size known up front (one downloading) does; else a compressed layer
 * is decompressed once into the spool directory; an uncompressed one is read in place.
 */
async function sizedTar(layer: Layer, what: string, spoolDir: () => Promise<string>): Promise<{ size: number; open: () => Promise<Readable>; verify?: LocalTarToCheck }> {
  const streamed = await layer.streamedTar?.();
  if (streamed) return streamed;
  const local = await layer.localTar?.();
  if (local && local.size >= VERIFY_ON_WORKER) {
    // Copied as it lies, hashed on a worker thread meanwhile: the copying thread does not hash.
    return { size: local.size, open: async () => openRange(local.path, local.offset, local.size), verify: { ...local, diffId: layer.diffId, what } };
  }
  if (local) return { size: local.size, open: () => layer.openTar() };
  const blob = await layer.blob();
  if (layerCompression(blob.mediaType) === 'none') return { size: blob.size, open: () => layer.openTar() };
  const spooled = await spoolTar(layer, spoolDir);
  return { size: spooled.size, open: async () => createReadStream(spooled.path) };
}
