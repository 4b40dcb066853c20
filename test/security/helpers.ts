// What the security tests observe on the host: a build's context and output in a temp dir of their own,
// the files of an image's top layer, the dockvm processes and temp dirs left behind.
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { execa } from 'execa';
import { type TarEntry, readTar } from '../../src/layer/tar.js';
import { openImage } from '../../src/transport/open.js';
import { DEBIAN_BASE_REPO_TAG, debianBaseFixture } from '../fixtures/debian.js';

export const BASE = DEBIAN_BASE_REPO_TAG;
/** --build-context for the Debian base fixture (FROM localhost/dockvm-fixture/debian-base:bookworm) */
export const baseContext = (): string => `${DEBIAN_BASE_REPO_TAG}=docker-archive:${debianBaseFixture()}`;

/** A temp dir holding ctx/ (the Containerfile and `files`, paths relative to ctx/) and whatever else the test puts beside it. */
export function buildDir(t: ExecutionContext, containerfile: string, files: Record<string, string | Buffer> = {}): { dir: string; ctx: string; out: string } {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-security-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const ctx = join(dir, 'ctx');
  mkdirSync(ctx);
  writeFileSync(join(ctx, 'Containerfile'), containerfile);
  for (const [name, data] of Object.entries(files)) {
    mkdirSync(dirname(join(ctx, name)), { recursive: true });
    writeFileSync(join(ctx, name), data);
  }
  return { dir, ctx, out: join(dir, 'out.tar') };
}

export interface LayerFile {
  entry: TarEntry;
  /** the content of a regular file (the first MiB) */
  data: Buffer;
}

/** The entries of each layer of an image, top layer last, with the first MiB of each file's content. */
export async function layers(archive: string): Promise<Map<string, LayerFile>[]> {
  const image = await openImage(archive);
  try {
    const result: Map<string, LayerFile>[] = [];
    for (const layer of image.layers) {
      const files = new Map<string, LayerFile>();
      for await (const { entry, body } of readTar(await layer.openTar(), { source: archive })) {
        const chunks: Buffer[] = [];
        let kept = 0;
        for await (const chunk of body as AsyncIterable<Buffer>) {
          if (kept < 1 << 20) chunks.push(chunk);
          kept += chunk.length;
        }
        files.set(entry.path, { entry, data: Buffer.concat(chunks) });
      }
      result.push(files);
    }
    return result;
  } finally {
    await image.close();
  }
}

/** A text file of a layer, or undefined. */
export function text(layer: Map<string, LayerFile> | undefined, path: string): string | undefined {
  return layer?.get(path)?.data.toString();
}

/** Whether a process is still there. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * A temp root of the test's own for a dockvm child (TMPDIR for the VMs' dirs, DOCKVM_TMPDIR for the
 * builds'): what is left in it afterwards, dockvm left behind; a process naming it (QEMU's agent socket
 * and disks, passt's socket are in it) is one dockvm left running.
 */
export function tempRoot(t: ExecutionContext): { env: Record<string, string>; left(): string[]; processes(): Promise<string[]> } {
  const root = mkdtempSync(join(tmpdir(), 'dockvm-security-tmp-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  return {
    env: { TMPDIR: root, DOCKVM_TMPDIR: root },
    left: () => readdirSync(root).sort(),
    processes: async () => {
      const { stdout } = await execa('ps', ['-eo', 'pid=,args='], { reject: false });
      return stdout.split('\n').map((line) => line.trim()).filter((line) => line.includes(root) && !line.includes('ps -eo'));
    },
  };
}
