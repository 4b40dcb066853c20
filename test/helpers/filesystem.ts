// What a user compares between two filesystem tars (an export, a layer), and podman's view of an image.
import { createHash } from 'node:crypto';
import { createReadStream, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { execa } from 'execa';
import { readTar, type TarEntry } from '../../src/layer/tar.js';
import { uniqueName } from './peers.js';

export interface Seen {
  type: TarEntry['type'];
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  sha256?: string;
  linkname?: string;
  dev?: string;
  xattrs?: Record<string, string>;
}

/** Every entry of a tar file by path (in tar order), with a content hash instead of the content. */
export async function listing(path: string): Promise<Map<string, Seen>> {
  const seen = new Map<string, Seen>();
  for await (const { entry, body } of readTar(createReadStream(path), { source: path })) {
    const hash = createHash('sha256');
    for await (const chunk of body) hash.update(chunk as Buffer);
    const item: Seen = { type: entry.type, mode: entry.mode, uid: entry.uid, gid: entry.gid, size: entry.size, mtime: entry.mtime };
    if (entry.type === 'file') item.sha256 = hash.digest('hex');
    if (entry.linkname !== undefined) item.linkname = entry.linkname;
    if (entry.devmajor !== undefined) item.dev = `${entry.devmajor},${entry.devminor}`;
    if (entry.xattrs) item.xattrs = Object.fromEntries(Object.entries(entry.xattrs).map(([k, v]) => [k, v.toString('hex')]));
    seen.set(entry.path, item);
  }
  return seen;
}

/** `podman load` + `podman create` + `podman export` of `tag` from `archive`, into a temp tar file. */
export async function podmanExport(t: ExecutionContext, archive: string, tag: string, options: { arch?: string } = {}): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-podman-'));
  const container = uniqueName('export');
  t.teardown(async () => {
    await execa('podman', ['rm', '--force', '--ignore', container], { reject: false });
    await execa('podman', ['rmi', '--force', tag], { reject: false });
    rmSync(dir, { recursive: true, force: true });
  });
  await execa('podman', ['load', '--quiet', '--input', archive]);
  // --arch: an image of another architecture than the host's is created as what it is, without a warning
  await execa('podman', ['create', ...(options.arch ? ['--arch', options.arch] : []), '--name', container, tag, '/nothing']);
  // podman export cannot write to the socket Node gives a child as stdout: a file it is.
  const out = join(dir, 'podman-export.tar');
  await execa('podman', ['export', '--output', out, container]);
  return out;
}
