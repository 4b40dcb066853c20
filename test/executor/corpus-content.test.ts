// Containerfiles that use what Debian's buildah 1.28 lacks (heredocs, ADD --unpack=false, RUN --mount,
// RUN --network), built by dockvm (real boots) and checked by content: the files the steps made, what no
// layer may hold (cache mounts, mount points, a secret), the config; and large files across steps, whose
// bytes each layer reads from the scratch disk's image after the VM is gone.
import test from 'ava';
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readTar } from '../../src/layer/tar.js';
import { openImage } from '../../src/transport/open.js';
import { DEBIAN_BASE_REPO_TAG, debianBaseFixture } from '../fixtures/debian.js';
import type { Seen } from '../helpers/filesystem.js';
import { runDockvm } from '../helpers/peers.js';
import { qemuCounter } from '../helpers/qemu-counter.js';
import { fixtureContext, flattenedListing, imageConfig, prepareFixtureLowers } from './peer-build.js';

const corpus = fileURLToPath(new URL('../containerfiles/', import.meta.url));
const contexts = fileURLToPath(new URL('./contexts/', import.meta.url));
const scratch = mkdtempSync(join(tmpdir(), 'dockvm-corpus-content-'));
test.before(prepareFixtureLowers);
test.after.always(() => rmSync(scratch, { recursive: true, force: true }));

/** A flattened image's files, and each layer's paths and bytes. */
async function built(archive: string) {
  const files = await flattenedListing(archive, scratch);
  const image = await openImage(archive);
  const layers: { paths: string[]; bytes: Buffer }[] = [];
  try {
    for (const layer of image.layers) {
      const chunks: Buffer[] = [];
      const tar = await layer.openTar();
      const paths: string[] = [];
      tar.on('data', (chunk: Buffer) => chunks.push(chunk));
      for await (const { entry } of readTar(tar, { source: archive })) paths.push(entry.path);
      layers.push({ paths, bytes: Buffer.concat(chunks) });
    }
  } finally {
    await image.close();
  }
  return { files, layers };
}

/** The content of a file in the flattened image (a fresh flatten holds it: read it back by listing's hash). */
function content(files: Map<string, Seen>, path: string, expected: string): boolean {
  const item = files.get(path);
  return item?.sha256 === createHash('sha256').update(expected).digest('hex');
}

test.serial('shell-exec: exec form, SHELL, heredocs as the command and as a COPY source', async (t) => {
  const out = join(scratch, 'shell-exec.tar');
  const run = await runDockvm(['build', '--build-context', fixtureContext(), '-t', 'localhost/dockvm-test/shell-exec:1', '-o', out, join(corpus, 'shell-exec')]);
  t.is(run.exitCode, 0, run.stderr);
  const { files } = await built(out);
  t.true(content(files, 'exec.txt', 'exec form\n'), 'RUN in exec form');
  t.true(content(files, 'shell.txt', 'bash 5\n'), 'SHELL ["/bin/bash", …] runs shell forms in bash');
  t.true(content(files, 'heredoc.txt', 'heredoc as the command\n'), 'a heredoc as the whole command');
  t.true(content(files, 'quoted.txt', 'literal $HOME stays\n'), "a quoted heredoc is not expanded");
  t.true(content(files, 'etc/generated.conf', 'greeting=hello\n'), 'COPY <<EOF, expanded with the ARG');
  t.like(files.get('etc/generated.conf'), { mode: 0o644, uid: 0, gid: 0 });
  const { config } = await imageConfig(out);
  t.deepEqual(config?.Entrypoint, ['/bin/bash', '-c']);
  t.deepEqual(config?.Cmd, ['/bin/bash', '-o', 'pipefail', '-c', 'echo "shell form under SHELL"']);
  t.deepEqual(config?.Shell, ['/bin/bash', '-o', 'pipefail', '-c']);
});

test.serial('add-tar: ADD unpacks a local tar with its owners and modes, ADD --unpack=false and COPY keep it', async (t) => {
  const out = join(scratch, 'add-tar.tar');
  const run = await runDockvm(['build', '--build-context', fixtureContext(), '-t', 'localhost/dockvm-test/add-tar:1', '-o', out, join(corpus, 'add-tar')]);
  t.is(run.exitCode, 0, run.stderr);
  const { files } = await built(out);
  t.like(files.get('opt/unpacked/bin/tool'), { type: 'file', mode: 0o755, uid: 0, size: 20 });
  t.like(files.get('opt/unpacked/etc/tool.conf'), { type: 'file', mode: 0o644, size: 12 });
  const tarHash = createHash('sha256').update(readFileSync(join(corpus, 'add-tar', 'rootfs.tar'))).digest('hex');
  t.is(files.get('opt/kept/rootfs.tar')?.sha256, tarHash, 'ADD --unpack=false keeps the archive');
  t.is(files.get('opt/copied.tar')?.sha256, tarHash, 'COPY never unpacks');
  t.false(files.has('opt/unpacked/rootfs.tar'));
});

test.serial('mounts: cache, secret, tmpfs and bind mounts (context, stage), COPY --from an image, --network=none, a heredoc file, ADD URL --checksum', async (t) => {
  const secret = `s3cr3t-${Date.now()}-never-in-a-layer`;
  const secretFile = join(scratch, 'token');
  writeFileSync(secretFile, secret);
  const download = Buffer.from('downloaded on the host\n');
  const server = createServer((request, response) => {
    if (request.url !== '/files/tool.txt') return void response.writeHead(404).end();
    response.writeHead(200, { 'Last-Modified': 'Tue, 14 Nov 2023 22:13:20 GMT', 'Content-Length': download.length }).end(download);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.close());
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/files/tool.txt`;
  const sum = `sha256:${createHash('sha256').update(download).digest('hex')}`;

  const out = join(scratch, 'mounts.tar');
  const qemu = await qemuCounter(t);
  const run = await runDockvm(
    ['build', '--build-context', fixtureContext(), '--secret', `id=token,src=${secretFile}`, '--build-arg', `URL=${url}`, '--build-arg', `SUM=${sum}`, '-t', 'localhost/dockvm-test/mounts:1', '-o', out, join(contexts, 'mounts')],
    { env: qemu.env },
  );
  t.is(run.exitCode, 0, run.stderr);
  t.is(qemu.vms(), 1, 'every step of the stage in one boot');
  const { files, layers } = await built(out);
  const sha = (text: string) => createHash('sha256').update(text).digest('hex');

  t.true(content(files, 'from-cache.txt', 'first-step\n'), 'a cache mount keeps what an earlier step wrote');
  t.true(content(files, 'other-cache.txt', ''), 'a cache with another id is another directory');
  t.true(content(files, 'token-file.sha256', `${sha(secret)}  -\n`), 'the secret as a file');
  t.true(content(files, 'token-mode.txt', '400 0\n'), "the secret file's mode and owner");
  t.true(content(files, 'token-env.sha256', `${sha(secret)}  -\n`), 'the secret as a variable');
  t.true(content(files, 'tmpfs.txt', '1\n'), 'a tmpfs at the target');
  t.true(content(files, 'bound.txt', 'bound content\n'), 'the context bound at the target');
  t.true(content(files, 'bind-mode.txt', 'read-only\n'), 'a bind mount is read-only by default');
  t.is(files.get('bound-stage-file.txt')?.sha256, files.get('etc/debian_version')?.sha256, "a bind mount of another stage's file");
  t.true(content(files, 'bound-stage-dir.txt', 'cap-tool\nhello\nhello-hardlink\nhello-symlink\nsuid-tool\n'), "a bind mount of another stage's directory");
  t.true(content(files, 'from-image/hello', '#!/bin/sh\necho hello from the dockvm fixture\n'), 'COPY --from an image');
  t.like(files.get('from-image/hello'), { mode: 0o755, uid: 0, gid: 0 });
  t.true(content(files, 'net-none.txt', 'lo\n'), 'RUN --network=none: only lo');
  t.true(content(files, 'net-default.txt', 'eth0\nlo\n'), 'RUN: the network');
  t.true(content(files, 'heredoc-file.txt', 'from a heredoc run as /dev/pipes/EOF\n'), 'a heredoc with #! runs as a file');
  t.like(files.get('downloads/tool.txt'), { type: 'file', mode: 0o600, uid: 0, size: download.length, mtime: 1 });
  t.is(files.get('downloads/tool.txt')?.sha256, sha(download.toString()));

  for (const mountPoint of ['var/cache/app', 'scratch-tmp', 'mnt/data', 'mnt/version', 'mnt/bin', 'run/secrets', 'dev/pipes']) {
    t.false(layers.some((layer) => layer.paths.some((path) => path === mountPoint || path.startsWith(`${mountPoint}/`))), `no layer holds ${mountPoint}`);
  }
  t.false(layers.some((layer) => layer.bytes.includes(secret)), 'no layer holds the secret');
  t.false(readFileSync(out).includes(secret), 'the archive (config, history) does not hold it');
  t.false(`${run.stdout}${run.stderr}`.includes(secret), 'the log does not show it');
});

test.serial('large files across steps: each layer holds the bytes its step wrote (read from the scratch disk after later steps ran)', async (t) => {
  const dir = mkdtempSync(join(scratch, 'large-'));
  writeFileSync(
    join(dir, 'Containerfile'),
    [
      `FROM ${DEBIAN_BASE_REPO_TAG}`,
      'RUN head -c 24000000 /dev/urandom > /big1 && sha256sum /big1 > /big1.sha256',
      'RUN rm /big1 && head -c 6000000 /dev/urandom > /big2 && sha256sum /big2 > /big2.sha256',
      'RUN head -c 3000000 /dev/urandom >> /big2 && sha256sum /big2 > /big2-grown.sha256 && truncate -s 40M /sparse',
      '',
    ].join('\n'),
  );
  const out = join(scratch, 'large.tar');
  const run = await runDockvm(['build', '--build-context', `${DEBIAN_BASE_REPO_TAG}=docker-archive:${debianBaseFixture()}`, '-o', out, dir]);
  t.is(run.exitCode, 0, run.stderr);
  const image = await openImage(out);
  const layers: Map<string, { size: number; sha256: string; text: string }>[] = [];
  try {
    for (const layer of image.layers.slice(-3)) {
      const files = new Map<string, { size: number; sha256: string; text: string }>();
      for await (const { entry, body } of readTar(await layer.openTar(), { source: out })) {
        const hash = createHash('sha256');
        const chunks: Buffer[] = [];
        for await (const chunk of body) {
          hash.update(chunk as Buffer);
          if (entry.size < 4096) chunks.push(chunk as Buffer);
        }
        files.set(entry.path, { size: entry.size, sha256: hash.digest('hex'), text: Buffer.concat(chunks).toString() });
      }
      layers.push(files);
    }
  } finally {
    await image.close();
  }
  const recorded = (files: Map<string, { text: string }>, name: string) => files.get(name)?.text.split(' ')[0];
  const [first, second, third] = layers as [typeof layers[0], typeof layers[0], typeof layers[0]];
  t.is(first.get('big1')?.size, 24_000_000);
  t.is(first.get('big1')?.sha256, recorded(first, 'big1.sha256'), 'the first layer has the bytes the step wrote, though a later step deleted the file');
  t.true(second.has('.wh.big1'), 'the delete is a whiteout');
  t.is(second.get('big2')?.sha256, recorded(second, 'big2.sha256'));
  t.is(third.get('big2')?.size, 9_000_000, 'a grown file is copied up whole');
  t.is(third.get('big2')?.sha256, recorded(third, 'big2-grown.sha256'));
  t.is(third.get('sparse')?.size, 40 * 1024 * 1024);
  t.is(third.get('sparse')?.sha256, createHash('sha256').update(Buffer.alloc(40 * 1024 * 1024)).digest('hex'), 'a sparse file reads as zeros');
});
