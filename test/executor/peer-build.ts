// Building Containerfiles with dockvm and with buildah (the peer: `buildah bud --format docker --isolation
// chroot` as root) over the Debian fixture, and comparing what a user would: the flattened filesystems
// (paths, types, modes, owners, sizes, contents, link targets, xattrs; not mtimes) and the image configs.
import { createWriteStream, mkdirSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { execa } from 'execa';
import { flattenImage } from '../../src/flatten/flatten.js';
import { openImage } from '../../src/transport/open.js';
import type { ContainerConfig, ImageConfig } from '../../src/image/config.js';
import { DEBIAN_REPO_TAG, debianFixture } from '../fixtures/debian.js';
import { listing, type Seen } from '../helpers/filesystem.js';
import { hasTool } from '../helpers/peers.js';

/** --build-context that makes the corpus's FROM name the fixture archive, for dockvm. */
export function fixtureContext(): string {
  return `${DEBIAN_REPO_TAG}=docker-archive:${debianFixture()}`;
}

/** Whether buildah can build here: installed, and run as root (chroot isolation needs it). */
export function buildahUsable(): boolean {
  return process.getuid?.() === 0 && hasTool('buildah');
}

/**
 * A buildah store of its own, with the fixture pulled into it under its name. The overlay driver, whose
 * layers are overlayfs uppers as dockvm's are: the vfs driver's differ compares sizes and mtimes and misses
 * a file whose content changed but not those (shadow's /etc/group- backup after groupadd), and its plain
 * directories keep a hard link to a lower file where overlayfs copies the file up.
 */
export class BuildahStore {
  private constructor(readonly dir: string) {}

  static async create(dir: string): Promise<BuildahStore> {
    mkdirSync(dir, { recursive: true });
    const store = new BuildahStore(dir);
    await store.run(['pull', '--quiet', `docker-archive:${debianFixture()}`]);
    return store;
  }

  async run(args: readonly string[]): Promise<string> {
    const result = await execa('buildah', ['--root', join(this.dir, 'root'), '--runroot', join(this.dir, 'run'), '--storage-driver', 'overlay', ...args], { reject: false, stdin: 'ignore' });
    if (result.exitCode !== 0) throw new Error(`buildah ${args.join(' ')} failed (${result.exitCode}): ${String(result.stderr).trim().split('\n').slice(-8).join('\n')}`);
    return String(result.stdout);
  }

  /**
   * `buildah bud` of a context, written as a docker-archive at `output`. With --layers, each step is
   * committed as dockvm (and BuildKit) commit them: a RUN over the layers before it, so that a hard link
   * made to a file of an earlier step copies the file up (without, one container runs every step and
   * the link joins the earlier step's inode).
   */
  async build(context: string, tag: string, output: string, extra: readonly string[] = []): Promise<string> {
    await this.run(['bud', '--quiet', '--format', 'docker', '--isolation', 'chroot', '--layers', '--timestamp', '1', '-t', tag, ...extra, context]);
    await rm(output, { force: true }); // buildah push does not replace an archive
    await this.run(['push', '--quiet', tag, `docker-archive:${output}:${tag}`]);
    return output;
  }
}

/** An image archive's merged filesystem, by path, contents hashed; hard links as what they link to. */
export async function flattenedListing(archive: string, scratch: string): Promise<Map<string, Seen>> {
  const image = await openImage(archive);
  const tar = join(scratch, `${archive.replace(/[^A-Za-z0-9]/g, '_')}.flat.tar`);
  try {
    await pipeline(flattenImage(image), createWriteStream(tar));
  } finally {
    await image.close();
  }
  const seen = await listing(tar);
  for (const [path, item] of seen) {
    if (item.type !== 'link') continue;
    const target = seen.get(item.linkname!);
    if (target) seen.set(path, { ...target, type: 'link' });
  }
  return seen;
}

/** What differs between two listings, one line each (mtimes aside; `ignore` paths left out). */
export function filesystemDifferences(ours: Map<string, Seen>, theirs: Map<string, Seen>, ignore: (path: string) => boolean = () => false): string[] {
  const differences: string[] = [];
  const describe = (item: Seen) => {
    const { mtime: _mtime, ...rest } = item;
    if (rest.type === 'link') delete rest.linkname; // a hard link: which of the group holds the content is the tar's business
    return JSON.stringify(rest);
  };
  for (const [path, item] of ours) {
    if (ignore(path)) continue;
    const other = theirs.get(path);
    if (!other) differences.push(`only dockvm has ${path}: ${describe(item)}`);
    else if (describe(item) !== describe(other)) differences.push(`${path}: dockvm ${describe(item)} buildah ${describe(other)}`);
  }
  for (const [path, item] of theirs) if (!ignore(path) && !ours.has(path)) differences.push(`only buildah has ${path}: ${describe(item)}`);
  return differences;
}

export async function imageConfig(archive: string): Promise<ImageConfig> {
  const image = await openImage(archive);
  try {
    return image.config;
  } finally {
    await image.close();
  }
}

/**
 * The container config as both write it: empty fields left out (buildah writes "User": "", "Volumes": {},
 * Docker omits them), and the known differences: buildah's own label, and ArgsEscaped, which BuildKit sets
 * with CMD (for Docker's sake) and buildah does not, and the Hostname buildah records (its container's ID).
 */
export function comparableConfig(config: ContainerConfig | undefined): ContainerConfig {
  const { Labels, ArgsEscaped: _escaped, Hostname: _hostname, ...rest } = config ?? {};
  const labels = Object.fromEntries(
    Object.entries((Labels as Record<string, string> | undefined) ?? {})
      .filter(([key]) => key !== 'io.buildah.version')
      .sort(([a], [b]) => (a < b ? -1 : 1)),
  );
  const kept = Object.entries({ ...rest, Labels: labels }).filter(([, value]) => !isEmpty(value));
  return Object.fromEntries(kept.sort(([a], [b]) => (a < b ? -1 : 1)));
}

function isEmpty(value: unknown): boolean {
  if (value === null || value === undefined || value === '' || value === false) return true;
  if (Array.isArray(value)) return value.length === 0;
  return typeof value === 'object' && Object.keys(value).length === 0;
}

/** What buildah leaves and Docker does not: the empty /etc/hosts, /etc/hostname, /etc/resolv.conf of its RUN mounts. */
export function buildahStub(path: string, theirs: Map<string, Seen>, ours: Map<string, Seen>): boolean {
  const item = theirs.get(path);
  return ['etc/hosts', 'etc/hostname', 'etc/resolv.conf'].includes(path) && !ours.has(path) && item?.type === 'file' && item.size === 0;
}
