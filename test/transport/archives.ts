// Building image archives of every shape by hand for the reader tests (independent of the writers).
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import type { ExecutionContext } from 'ava';
import type { TarEntry } from '../../src/layer/tar.js';
import { layerTar } from '../fixtures/assemble.js';
import { writeTar } from '../helpers/tar.js';

export const sha = (data: Buffer | string) => createHash('sha256').update(data).digest('hex');
export const gzip = (data: Buffer) => gzipSync(data);

export interface TarFile {
  path: string;
  data?: Buffer | string;
  symlink?: string;
}

/** A tar of regular files (mode 0644) and symlinks, in the order given. */
export async function tarOf(files: TarFile[]): Promise<Buffer> {
  return writeTar(files.map((file): [TarEntry, Buffer?] => {
    const base: Omit<TarEntry, 'type' | 'size'> = { path: file.path, mode: 0o644, uid: 0, gid: 0, mtime: 0 };
    if (file.symlink !== undefined) return [{ ...base, type: 'symlink', size: 0, mode: 0o777, linkname: file.symlink }];
    const data = Buffer.from(file.data ?? '');
    return [{ ...base, type: 'file', size: data.length }, data];
  }));
}

/** Two small layers: a base with /etc/hello, an app layer with /app/run. */
export async function sampleLayers(): Promise<{ base: Buffer; app: Buffer }> {
  return {
    base: await layerTar([{ path: 'etc', type: 'directory' }, { path: 'etc/hello', content: 'hello\n' }]),
    app: await layerTar([{ path: 'app', type: 'directory' }, { path: 'app/run', content: '#!/bin/sh\necho run\n', mode: 0o755 }]),
  };
}

/** A config for `layers` (uncompressed tars), as JSON bytes. */
export function configFor(layers: Buffer[], extra: Record<string, unknown> = {}): Buffer {
  return Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      created: '1970-01-01T00:00:01Z',
      config: { Env: ['PATH=/bin'], Cmd: ['/app/run'] },
      rootfs: { type: 'layers', diff_ids: layers.map((layer) => `sha256:${sha(layer)}`) },
      ...extra,
    }),
  );
}

/** A temp directory removed when the test ends. */
export async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'dockvm-transport-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}
