// Reading docker-archives as `docker save`, `podman save`, `skopeo copy` and nixpkgs dockerTools write
// them: manifest.json listing several images (layers as `<id>/layer.tar`, `<hex>.tar` or
// `blobs/sha256/<hex>`, compressed or not), or the legacy form with only `repositories` and
// `<id>/json` + `<id>/layer.tar`.
import { createGunzip } from 'node:zlib';
import { ImageFormatError } from '../errors.js';
import { DigestingStream, type Digest } from '../image/digest.js';
import type { ImageConfig, HistoryEntry } from '../image/config.js';
import { printable } from '../layer/tar.js';
import { checkLayerCount, loadConfig, loadedImage, type LoadedImage } from './loaded-image.js';
import { check, dockerManifestSchema, legacyLayerSchema, repositoriesSchema } from './schemas.js';
import { missing, readFile, readJsonFile, type FileStore } from './store.js';
import { StoredLayer } from './stored-layer.js';
import { chain, describeFailure, drain, openRange, readRange, sniffCompression } from './streams.js';

/** A digest that an entry's name claims for its content: `blobs/sha256/<hex>`, `<hex>.json`. */
function digestInName(name: string): Digest | undefined {
  const match = /^(?:blobs\/sha256\/([a-f0-9]{64})|([a-f0-9]{64})\.json)$/.exec(name);
  const hex = match?.[1] ?? match?.[2];
  return hex ? `sha256:${hex}` : undefined;
}

/** Every image of a docker-archive whose store has a manifest.json. */
export async function readManifestImages(store: FileStore): Promise<LoadedImage[]> {
  const manifest = check(dockerManifestSchema, await readJsonFile(store, 'manifest.json'), `${store.source}: manifest.json`);
  if (manifest.length === 0) throw new ImageFormatError(`${store.source}: manifest.json lists no images`, { source: store.source });
  return Promise.all(
    manifest.map(async (entry, i) => {
      const origin = `${store.source}: manifest.json [${i}]`;
      const what = `${store.source}: config ${printable(entry.Config)}`;
      const rawConfig = await readFile(store, entry.Config, `config ${printable(entry.Config)}`);
      const { config, configDigest } = loadConfig(rawConfig, what, digestInName(entry.Config));
      checkLayerCount(config, entry.Layers.length, origin);
      const layers = entry.Layers.map((name, j) => {
        const namedDigest = name.startsWith('blobs/') ? digestInName(name) : undefined;
        return new StoredLayer({ store, name, diffId: config.rootfs.diff_ids[j]!, ...(namedDigest ? { namedDigest } : {}) });
      });
      return loadedImage({ rawConfig, config, configDigest, layers, repoTags: entry.RepoTags ?? [], origin });
    }),
  );
}

/**
 * The legacy form (before manifest.json): `repositories` names each image's top layer; each layer's
 * `<id>/json` names its parent. There is no image config, so one is made from the top layer's json, and
 * diff_ids are computed by hashing every layer once.
 */
export async function readLegacyImages(store: FileStore): Promise<LoadedImage[]> {
  const repositories = check(repositoriesSchema, await readJsonFile(store, 'repositories'), `${store.source}: repositories`);
  const tagsByTop = new Map<string, string[]>();
  for (const [name, tags] of Object.entries(repositories)) {
    for (const [tag, id] of Object.entries(tags)) tagsByTop.set(id, [...(tagsByTop.get(id) ?? []), `${name}:${tag}`]);
  }
  if (tagsByTop.size === 0) throw new ImageFormatError(`${store.source}: repositories names no images`, { source: store.source });
  const images: LoadedImage[] = [];
  for (const [top, repoTags] of tagsByTop) images.push(await readLegacyImage(store, top, repoTags));
  return images;
}

type LegacyLayerJson = ReturnType<typeof legacyLayerSchema.parse>;

async function readLegacyImage(store: FileStore, top: string, repoTags: string[]): Promise<LoadedImage> {
  // Walk from the top layer down its parents, then reverse: bottom layer first.
  const chainIds: string[] = [];
  const jsons: LegacyLayerJson[] = [];
  for (let id: string | undefined = top; id !== undefined; ) {
    if (chainIds.includes(id)) throw new ImageFormatError(`${store.source}: layer ${id} is its own ancestor`, { source: store.source, entry: `${id}/json` });
    chainIds.push(id);
    const json: LegacyLayerJson = check(legacyLayerSchema, await readJsonFile(store, `${id}/json`), `${store.source}: ${id}/json`);
    jsons.push(json);
    id = json.parent;
  }
  chainIds.reverse();
  jsons.reverse();
  const diffIds: Digest[] = [];
  for (const id of chainIds) diffIds.push(await hashLegacyLayer(store, `${id}/layer.tar`));
  const topJson = jsons[jsons.length - 1]!;
  const config: ImageConfig = {
    architecture: topJson.architecture ?? 'amd64',
    os: topJson.os ?? 'linux',
    ...(topJson.created !== undefined ? { created: topJson.created } : {}),
    ...(topJson.author !== undefined ? { author: topJson.author } : {}),
    ...(topJson.config ? { config: topJson.config } : {}),
    rootfs: { type: 'layers', diff_ids: diffIds },
    history: jsons.map((json): HistoryEntry => {
      const createdBy = json.container_config?.Cmd?.join(' ');
      return { ...(json.created !== undefined ? { created: json.created } : {}), ...(createdBy ? { created_by: createdBy } : {}) };
    }),
  };
  const rawConfig = Buffer.from(JSON.stringify(config));
  const { configDigest } = loadConfig(rawConfig, `${store.source}: ${top}/json`);
  const layers = chainIds.map((id, i) => new StoredLayer({ store, name: `${id}/layer.tar`, diffId: diffIds[i]! }));
  return loadedImage({ rawConfig, config, configDigest, layers, repoTags, origin: `${store.source}: repositories` });
}

async function hashLegacyLayer(store: FileStore, name: string): Promise<Digest> {
  const range = await store.locate(name);
  if (!range) throw missing(store, name, `layer ${printable(name)}`);
  const what = `${store.source}: layer ${printable(name)}`;
  const compression = sniffCompression(await readRange(range.path, range.offset, Math.min(6, range.size)));
  const digester = new DigestingStream({ what });
  const steps = compression === 'gzip' ? [createGunzip(), digester] : [digester];
  await drain(chain(openRange(range.path, range.offset, range.size), steps, describeFailure(what)));
  return digester.digest;
}
