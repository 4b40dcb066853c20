// Building Containerfiles with dockvm and with buildah (the peer: `buildah bud --format docker --isolation
// chroot` as root) over the Debian fixture, and comparing what a user would: the flattened filesystems
// (paths, types, modes, owners, sizes, contents, link targets, xattrs; not mtimes) and the image configs.
import { createWriteStream, mkdirSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { execa } from 'execa';
import { lowersFor } from '../../src/build/lowers.js';
import { flattenImage } from '../../src/flatten/flatten.js';
import { openImage } from '../../src/transport/open.js';
import type { ContainerConfig, ImageConfig } from '../../src/image/config.js';
import { DEBIAN_REPO_TAG, debianFixture } from '../fixtures/debian.js';
import { listing, type Seen } from '../helpers/filesystem.js';
import { hasTool } from '../helpers/peers.js';

/**
 * The fixture's lowers made before boots are counted: its POSIX-ACL layer's ext4 lower is made by a boot
 * of its own the first time (src/build/lowers.ts), which is not the build's.
 */
export async function prepareFixtureLowers(): Promise<void> {
  const image = await openImage(`docker-archive:${debianFixture()}`);
  try {
    await lowersFor(image, 'the Debian fixture');
  } finally {
    await image.close();
  }
}

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
   * `buildah bud` of a context, written as a docker-archive at `output`. Each of buildah's two modes
   * departs from BuildKit (and dockvm) in one way the corpus shows, so a case picks the mode that does
   * not touch what it tests:
   *   - without --layers, one container runs every step: a hard link made to a file of an earlier step
   *     joins that file's inode, where BuildKit's overlayfs copies the file up first (special-files);
   *   - with --layers, buildah 1.28 makes no WORKDIR directory that no later step of the stage uses,
   *     where BuildKit makes it as a layer of its own (metadata, users).
   */
  async build(context: string, tag: string, output: string, options: { layers?: boolean } = {}): Promise<string> {
    await this.run(['bud', '--quiet', '--format', 'docker', '--isolation', 'chroot', ...(options.layers ? ['--layers'] : []), '--timestamp', '1', '-t', tag, context]);
    await rm(output, { force: true }); // buildah push does not replace an archive
    await this.run(['push', '--quiet', tag, `docker-archive:${output}:${tag}`]);
    return output;
  }

  /** Remove the store: its containers, the overlay mounts buildah keeps, its files. */
  async remove(): Promise<void> {
    await this.run(['rm', '--all']).catch(() => undefined);
    await execa('umount', ['--recursive', '--lazy', join(this.dir, 'root', 'overlay')], { reject: false });
    await rm(this.dir, { recursive: true, force: true });
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
  const seen = await listing(tar).finally(() => rm(tar, { force: true }));
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
 * Docker omits them), and the known differences: buildah's own label; ArgsEscaped, which BuildKit sets
 * with CMD (for Docker's sake) and buildah does not; the Hostname buildah records (its container's ID);
 * WorkingDir "/", which BuildKit gives a stage FROM scratch and buildah leaves empty (the same thing).
 */
export function comparableConfig(config: ContainerConfig | undefined): ContainerConfig {
  const { Labels, ArgsEscaped: _escaped, Hostname: _hostname, ...rest } = config ?? {};
  if (rest.WorkingDir === '/') delete rest.WorkingDir;
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
