// The hash of every input of a build except the base image: the spec file's content (canonical JSON, so
// reformatting it changes nothing), what copyToRoot copies (names, types, modes, owners, link targets,
// device numbers, mtimes as the layer will clamp them, file bytes), the scripts, the settings the host
// supplies (architecture default, SOURCE_DATE_EPOCH) and the layer-format version of dockvm.
import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { createHash, type Hash } from 'node:crypto';
import { SpecError } from '../errors.js';
import type { Digest } from '../image/digest.js';
import { hostArchitecture } from '../image/platform.js';
import { walkDirectory } from '../layer/directory.js';
import type { TarEntry } from '../layer/tar.js';
import type { BuildSpec } from '../spec/load.js';
import { canonicalJson } from '../cache/canonical-json.js';
import { LAYER_FORMAT_VERSION } from '../layer/format-version.js';

export { canonicalJson, LAYER_FORMAT_VERSION };

/** sha256 over the spec's inputs. `rawSpec` is the parsed spec file (before defaults). */
export async function inputsHash(spec: BuildSpec, rawSpec: unknown): Promise<Digest> {
  const hash = createHash('sha256');
  record(hash, {
    layerFormat: LAYER_FORMAT_VERSION,
    spec: rawSpec,
    // null (the base's) hashes as the host's, as it did before: the base is hashed apart, by its digest
    architecture: spec.architecture ?? hostArchitecture(),
    sourceDateEpoch: process.env.SOURCE_DATE_EPOCH ?? null,
    runAsRoot: spec.runAsRoot,
    extraCommands: spec.extraCommands,
    copyToRoot: spec.copyToRoot.length,
  });
  const clamp = mtimeClamp(spec);
  for (const source of spec.copyToRoot) await hashSource(hash, source, spec, clamp);
  return `sha256:${hash.digest('hex')}`;
}

/** One framed record: its length first, so no two sequences of records hash alike. */
function record(hash: Hash, value: unknown): void {
  const text = Buffer.from(canonicalJson(value));
  hash.update(`${text.length}:`);
  hash.update(text);
}

async function hashSource(hash: Hash, source: string, spec: BuildSpec, clamp: number | undefined): Promise<void> {
  const stats = await stat(source).catch((err: NodeJS.ErrnoException) => {
    throw new SpecError(`copyToRoot: cannot read ${source}: ${err.code ?? err.message}`, [], { field: 'copyToRoot', source, cause: err });
  });
  if (stats.isFile()) {
    // A tarball: its bytes cover every entry (a re-gzipped but equal tarball rebuilds once, harmlessly).
    record(hash, { tarball: stats.size });
    await hashLargeFile(hash, source);
    return;
  }
  if (!stats.isDirectory()) throw new SpecError(`copyToRoot: ${source} is neither a directory nor a tarball`, [], { field: 'copyToRoot', source });
  record(hash, { directory: true });
  // The same walk copyToRoot makes, so exactly what reaches the layer is hashed. Small files are read a
  // few ahead of the hash (in parallel: many small files are the common case), hashed in walk order.
  const walk = walkDirectory(source, { uid: spec.uid, gid: spec.gid, followDirSymlinks: !spec.keepContentsDirlinks });
  const window: { entry: TarEntry; file: Buffer | undefined; data: Promise<Buffer> | null }[] = [];
  const hashNext = async () => {
    const { entry, file, data } = window.shift()!;
    const mtime = clamp !== undefined && entry.mtime > clamp ? clamp : entry.mtime;
    record(hash, {
      path: entry.path,
      type: entry.type,
      mode: entry.mode,
      uid: entry.uid,
      gid: entry.gid,
      size: entry.size,
      mtime,
      linkname: entry.linkname ?? null,
      devmajor: entry.devmajor ?? null,
      devminor: entry.devminor ?? null,
    });
    if (data) hash.update(await data);
    else if (file && entry.size > 0) await hashLargeFile(hash, file);
  };
  for await (const { entry, file } of walk) {
    const data = file && entry.size > 0 && entry.size < SMALL_FILE ? readFile(file) : null;
    data?.catch(() => undefined); // awaited in hashNext; this only keeps an early failure from being "unhandled"
    window.push({ entry, file, data });
    if (window.length >= READ_AHEAD) await hashNext();
  }
  while (window.length > 0) await hashNext();
  record(hash, { end: source });
}

/** Files below this are read whole (a stream's buffer per small file costs more than the file); larger ones are streamed. */
const SMALL_FILE = 1024 * 1024;
/** Small files read ahead of the hash. */
const READ_AHEAD = 16;

async function hashLargeFile(hash: Hash, path: string | Buffer): Promise<void> {
  for await (const chunk of createReadStream(path, { highWaterMark: SMALL_FILE })) hash.update(chunk as Buffer);
}

/**
 * The time the layer clamps mtimes to (SOURCE_DATE_EPOCH, else `created`), as run-as-root computes it:
 * a checkout's fresh mtimes above it do not change the layer, so they must not force a rebuild.
 * With created "now" and no SOURCE_DATE_EPOCH nothing is clamped in a useful way: mtimes count as they are.
 */
function mtimeClamp(spec: BuildSpec): number | undefined {
  const epoch = process.env.SOURCE_DATE_EPOCH;
  if (epoch !== undefined && epoch !== '') {
    const value = Number(epoch);
    if (Number.isInteger(value) && value >= 0) return value;
  }
  if (spec.created === 'now') return undefined;
  return Math.floor(Date.parse(spec.created) / 1000);
}
