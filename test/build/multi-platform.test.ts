// dockvm build --platform linux/amd64,linux/arm64: one image per platform, every RUN on its own CPU (an
// amd64 VM and an emulated arm64 one), written as an OCI image index. The base is itself an index: the
// two Debian fixtures, copied into one OCI layout by skopeo, named by an index this test writes, so that
// FROM resolves per platform. Checked: the index's manifests and platforms (as skopeo reads them), each
// config's os/architecture/variant, the ELF machine of each image's /bin/sh, what each RUN saw; that each
// platform's image is what a single-platform build of it gives (its steps then come from the build
// cache the multi-platform build filled: no VM); and the same build pushed as an index, pulled back by
// its digest, and into an OCI archive. Two VM boots, counted. A docker-archive asked for several platforms is refused up front.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { sha256 } from '../../src/image/digest.js';
import { MediaType } from '../../src/image/media-types.js';
import { readTar } from '../../src/layer/tar.js';
import { openImage, type OpenedImage } from '../../src/transport/index.js';
import { elfFacts } from '../../src/vm/elf.js';
import { debianArm64BaseFixture, debianBaseFixture, hasDebianArm64Fixture } from '../fixtures/debian.js';
import { hasTool, peer, runDockvm } from '../helpers/peers.js';
import { needs } from '../helpers/prerequisites.js';
import { qemuCounter } from '../helpers/qemu-counter.js';
import { startRegistry } from '../helpers/registry.js';
import { layerTar, writeDockerArchive } from '../fixtures/assemble.js';

const ready = hasDebianArm64Fixture() && hasTool('qemu-system-aarch64') && hasTool('skopeo') && hasTool('docker-registry');
const multiTest = needs(ready, 'the arm64 Debian fixture, qemu-system-aarch64, skopeo or docker-registry is missing (scripts/setup installs and builds them)', test.serial);

const BASE = 'localhost/dockvm-test/debian-multi:bookworm';

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-multi-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The two fixtures in one OCI layout (skopeo copies them), named "bookworm" by an index of both; made once per file. */
let fixtureIndex: Promise<string> | undefined;
const fixtureDir = mkdtempSync(join(tmpdir(), 'dockvm-multi-base-'));
test.after.always(() => rmSync(fixtureDir, { recursive: true, force: true }));

function indexOfFixtures(): Promise<string> {
  return (fixtureIndex ??= assembleIndex(fixtureDir));
}

async function assembleIndex(dir: string): Promise<string> {
  const layout = join(dir, 'base');
  const manifests = [];
  for (const [name, archive, platform] of [
    ['amd64', debianBaseFixture(), { architecture: 'amd64', os: 'linux' }],
    ['arm64', debianArm64BaseFixture(), { architecture: 'arm64', os: 'linux', variant: 'v8' }],
  ] as const) {
    await peer('skopeo', ['copy', '-q', `docker-archive:${archive}`, `oci:${layout}:${name}`]);
    const entry = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8')).manifests.find((m: { annotations: Record<string, string> }) => m.annotations['org.opencontainers.image.ref.name'] === name);
    manifests.push({ mediaType: entry.mediaType, digest: entry.digest, size: entry.size, platform });
  }
  const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests }));
  writeFileSync(join(layout, 'blobs', 'sha256', sha256(index).slice(7)), index);
  writeFileSync(
    join(layout, 'index.json'),
    JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: MediaType.OciIndex, digest: sha256(index), size: index.length, annotations: { 'org.opencontainers.image.ref.name': 'bookworm' } }] }),
  );
  return `oci:${layout}:bookworm`;
}

/** The bytes of the regular files at `paths`, and every symlink, in one layer of an image. */
async function layerFiles(image: OpenedImage, layer: number, paths: readonly string[]): Promise<{ files: Map<string, Buffer>; links: Map<string, string> }> {
  const files = new Map<string, Buffer>();
  const links = new Map<string, string>();
  for await (const { entry, body } of readTar(await image.layers[layer]!.openTar(), { source: `layer ${layer}` })) {
    const chunks: Buffer[] = [];
    for await (const chunk of body) if (paths.includes(entry.path)) chunks.push(chunk as Buffer);
    if (paths.includes(entry.path)) files.set(entry.path, Buffer.concat(chunks));
    if (entry.type === 'symlink') links.set(entry.path, entry.linkname!);
  }
  return { files, links };
}

/** bin/sh followed through the fixture's links (bin -> usr/bin, sh -> dash). */
function shellPath(links: Map<string, string>): string {
  const bin = links.get('bin') === 'usr/bin' ? 'usr/bin' : 'bin';
  return `${bin}/${links.get(`${bin}/sh`) ?? 'sh'}`;
}

multiTest('build --platform linux/amd64,linux/arm64: an index of two images, each RUN on its own CPU, each image what its single-platform build gives; pushed as an index', async (t) => {
  const dir = tempDir(t);
  const base = await indexOfFixtures();
  const ctx = join(dir, 'ctx');
  mkdirSync(ctx);
  writeFileSync(join(ctx, 'hello'), 'hello\n');
  writeFileSync(join(ctx, 'Containerfile'), [`FROM ${BASE}`, 'RUN uname -m > /arch && dpkg --print-architecture >> /arch', 'COPY hello /srv/hello', ''].join('\n'));
  const qemu = await qemuCounter(t);
  // the build cache on, in a directory of this test's own (the suite turns it off)
  const env = { ...qemu.env, DOCKVM_BUILD_CACHE: '', DOCKVM_BUILD_CACHE_DIR: join(dir, 'build-cache'), REGISTRY_AUTH_FILE: join(dir, 'no-auth.json'), DOCKER_CONFIG: join(dir, 'none') };
  const common = ['--build-context', `${BASE}=${base}`, '-t', 'localhost/dockvm-test/multi:1'];

  const out = join(dir, 'out');
  const run = await runDockvm(['build', ...common, '--platform', 'linux/amd64,linux/arm64', '-o', `oci:${out}`, '--json', ctx], { env });
  t.is(run.exitCode, 0, run.stderr);
  t.is(qemu.vmsOf('amd64'), 1, 'one amd64 VM');
  t.is(qemu.vmsOf('arm64'), 1, 'one arm64 VM');
  t.regex(run.stderr, /^#\d+ \[linux\/arm64 2\/3\] RUN uname -m/m, 'progress names the platform of each step');
  const result = JSON.parse(run.stdout);
  t.deepEqual(result.platforms.map((p: { platform: string }) => p.platform), ['linux/amd64', 'linux/arm64/v8']);

  // the index: what index.json names by the tag, as skopeo reads it, one manifest per platform
  const raw = await peer('skopeo', ['inspect', '--raw', `oci:${out}:1`]);
  t.is(sha256(Buffer.from(raw)), result.index.digest);
  const index = JSON.parse(raw);
  t.is(index.mediaType, MediaType.OciIndex);
  t.deepEqual(
    index.manifests.map((m: { digest: string; platform: unknown }) => [m.digest, m.platform]),
    [
      [result.platforms[0].manifestDigest, { architecture: 'amd64', os: 'linux' }],
      [result.platforms[1].manifestDigest, { architecture: 'arm64', os: 'linux', variant: 'v8' }],
    ],
  );

  for (const [i, [architecture, variant, machine, cpu]] of ([['amd64', undefined, 62, 'x86_64\namd64\n'], ['arm64', 'v8', 183, 'aarch64\narm64\n']] as const).entries()) {
    const image = await openImage(`oci:${out}:1`, { platform: { os: 'linux', architecture } });
    t.teardown(() => image.close());
    t.is(image.configDigest, result.platforms[i].imageId);
    t.is(image.config.os, 'linux');
    t.is(image.config.architecture, architecture);
    t.is(image.config.variant, variant);
    t.is(image.layers.length, 3, 'the base, the RUN, the COPY');
    // what the RUN saw: its own platform's CPU and Debian architecture
    t.is((await layerFiles(image, 1, ['arch'])).files.get('arch')?.toString(), cpu);
    // the image's /bin/sh is a program for that platform
    const { links } = await layerFiles(image, 0, []);
    const sh = shellPath(links);
    t.is(sh, 'usr/bin/dash');
    t.is(elfFacts((await layerFiles(image, 0, [sh])).files.get(sh)!)?.machine, machine);

    // a single-platform build of the same gives the same image (its steps from the cache: no VM)
    const single = join(dir, `${architecture}.tar`);
    const alone = await runDockvm(['build', ...common, '--platform', `linux/${architecture}`, '-o', single, '--json', ctx], { env });
    t.is(alone.exitCode, 0, alone.stderr);
    const aloneResult = JSON.parse(alone.stdout);
    t.is(aloneResult.imageId, image.configDigest);
    t.deepEqual(aloneResult.layers.map((l: { diffId: string }) => l.diffId), image.layers.map((l) => l.diffId));
  }
  t.is(qemu.vms(), 2, 'the single-platform builds booted nothing');

  // an OCI archive holds the same index (its steps from the cache)
  const archive = join(dir, 'multi.oci.tar');
  const archived = await runDockvm(['build', ...common, '--platform', 'linux/amd64,linux/arm64', '-o', `oci-archive:${archive}`, '--json', ctx], { env });
  t.is(archived.exitCode, 0, archived.stderr);
  t.is(JSON.parse(archived.stdout).index.digest, result.index.digest);
  t.is(sha256(Buffer.from(await peer('skopeo', ['inspect', '--raw', `oci-archive:${archive}:1`]))), result.index.digest);

  // the same build pushed: the index with both manifests, pulled back by the index's digest
  const registry = await startRegistry(t);
  const target = `${registry.host}/dockvm-test/multi:1`;
  const pushed = await runDockvm(['build', ...common, '--platform', 'linux/amd64,linux/arm64', '-o', `docker://${target}`, '--json', ctx], { env });
  t.is(pushed.exitCode, 0, pushed.stderr);
  const pushResult = JSON.parse(pushed.stdout);
  t.is(qemu.vms(), 2);
  const remote = await peer('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${target}`]);
  t.is(sha256(Buffer.from(remote)), pushResult.index.digest);
  t.deepEqual(JSON.parse(remote).manifests.map((m: { digest: string }) => m.digest), pushResult.platforms.map((p: { manifestDigest: string }) => p.manifestDigest));
  for (const [i, arch] of ['amd64', 'arm64'].entries()) {
    const back = join(dir, `pulled-${arch}.tar`);
    const pull = await runDockvm(['pull', `${registry.host}/dockvm-test/multi@${pushResult.index.digest}`, '--arch', arch, '-o', back, '--json'], { env });
    t.is(pull.exitCode, 0, pull.stderr);
    t.is(JSON.parse(pull.stdout).configDigest, result.platforms[i].imageId);
  }
});

multiTest('run-as-root of a spec with platforms: the script run in an amd64 and an arm64 VM, over each platform\'s base, written as an index; each image what a spec of that architecture alone gives', async (t) => {
  const dir = tempDir(t);
  const base = await indexOfFixtures();
  const qemu = await qemuCounter(t);
  const env = { ...qemu.env, DOCKVM_BUILD_CACHE: '', DOCKVM_BUILD_CACHE_DIR: join(dir, 'build-cache') };
  const fields = { name: 'localhost/dockvm-test/multi-spec', tag: '1', fromImage: base, runAsRoot: 'uname -m > /arch; dpkg --print-architecture >> /arch; useradd -u 1000 app' };
  writeFileSync(join(dir, 'multi.json'), JSON.stringify({ ...fields, platforms: ['linux/amd64', 'linux/arm64'], output: 'oci:out' }));
  const run = await runDockvm(['run-as-root', join(dir, 'multi.json'), '--json'], { env });
  t.is(run.exitCode, 0, run.stderr);
  t.is(qemu.vmsOf('amd64'), 1);
  t.is(qemu.vmsOf('arm64'), 1);
  const result = JSON.parse(run.stdout);
  t.like(result, { imageName: 'localhost/dockvm-test/multi-spec', imageTag: '1', bootedVm: true });
  t.deepEqual(result.platforms.map((p: { platform: string }) => p.platform), ['linux/amd64', 'linux/arm64/v8']);

  const out = join(dir, 'out');
  // index.json names the index alone (the platforms' images were built into the layout itself)
  t.deepEqual(JSON.parse(readFileSync(join(out, 'index.json'), 'utf8')).manifests, [{ mediaType: MediaType.OciIndex, digest: result.index.digest, size: JSON.parse(readFileSync(join(out, 'index.json'), 'utf8')).manifests[0].size, annotations: { 'org.opencontainers.image.ref.name': '1' } }]);
  const raw = await peer('skopeo', ['inspect', '--raw', `oci:${out}:1`]);
  t.is(sha256(Buffer.from(raw)), result.index.digest);
  t.deepEqual(JSON.parse(raw).manifests.map((m: { digest: string; platform: unknown }) => [m.digest, m.platform]), [
    [result.platforms[0].manifestDigest, { architecture: 'amd64', os: 'linux' }],
    [result.platforms[1].manifestDigest, { architecture: 'arm64', os: 'linux', variant: 'v8' }],
  ]);
  for (const [i, [architecture, variant, machine, cpu]] of ([['amd64', undefined, 62, 'x86_64\namd64\n'], ['arm64', 'v8', 183, 'aarch64\narm64\n']] as const).entries()) {
    const image = await openImage(`oci:${out}:1`, { platform: { os: 'linux', architecture } });
    t.teardown(() => image.close());
    t.is(image.configDigest, result.platforms[i].configDigest);
    t.like(image.config, { os: 'linux', architecture });
    t.is(image.config.variant, variant);
    t.is((await layerFiles(image, 1, ['arch'])).files.get('arch')?.toString(), cpu);
    const sh = shellPath((await layerFiles(image, 0, [])).links);
    t.is(elfFacts((await layerFiles(image, 0, [sh])).files.get(sh)!)?.machine, machine);
    // the same spec for this architecture alone: the same image (its layer from the cache: no VM)
    writeFileSync(join(dir, `${architecture}.json`), JSON.stringify({ ...fields, architecture, output: `${architecture}.tar` }));
    const alone = await runDockvm(['run-as-root', join(dir, `${architecture}.json`), '--json'], { env });
    t.is(alone.exitCode, 0, alone.stderr);
    t.like(JSON.parse(alone.stdout), { configDigest: image.configDigest, bootedVm: false });
  }
  t.is(qemu.vms(), 2);
  // -o into a docker-archive: refused before any VM, nothing written
  const archive = await runDockvm(['run-as-root', join(dir, 'multi.json'), '-o', join(dir, 'multi.tar')], { env });
  t.is(archive.exitCode, 1);
  t.regex(archive.stderr, /^dockvm: output: \S+multi\.tar is a docker-archive, which holds one platform's image; platforms lists 2: write an OCI layout \(oci:DIR\)$/m);
  t.false(existsSync(join(dir, 'multi.tar')));
  t.is(qemu.vms(), 2);
});

test('a docker-archive asked to hold several platforms: one line naming the outputs that can, before any VM boots, nothing written', async (t) => {
  const dir = tempDir(t);
  writeFileSync(join(dir, 'Containerfile'), 'FROM scratch\nRUN true\n');
  const qemu = await qemuCounter(t);
  const out = join(dir, 'out.tar');
  const run = await runDockvm(['build', '--platform', 'linux/amd64,linux/arm64', '-t', 'multi:1', '-o', out, dir], { env: qemu.env });
  t.is(run.exitCode, 2, run.stderr);
  t.is(
    run.stderr,
    `dockvm: -o ${out}: a docker-archive holds one image per name, not the 2 platforms asked for (linux/amd64, linux/arm64); write an OCI layout (oci:DIR), an OCI archive (oci-archive:PATH) or push (docker://REF), or build one platform\n`,
  );
  t.false(existsSync(out));
  t.is(qemu.starts().length, 0);
  const twice = await runDockvm(['build', '--platform', 'linux/arm64,arm64', '-t', 'multi:1', '-o', `oci:${join(dir, 'oci')}`, dir], { env: qemu.env });
  t.is(twice.exitCode, 2);
  t.regex(twice.stderr, /^dockvm: --platform linux\/arm64,arm64: linux\/arm64 is given twice\n$/);
});

test('a base without an image for one of the platforms: that error, naming the base and the platform, before any platform\'s VM boots', async (t) => {
  const dir = tempDir(t);
  await writeDockerArchive(join(dir, 'base.tar'), [{ repoTag: 'localhost/amd64-only:1', layers: [await layerTar([{ path: 'etc/base', content: 'base\n' }])] }]);
  writeFileSync(join(dir, 'hello'), 'hello\n');
  writeFileSync(join(dir, 'Containerfile'), 'FROM localhost/amd64-only:1\nCOPY hello /hello\n');
  const qemu = await qemuCounter(t);
  const out = join(dir, 'oci');
  const run = await runDockvm(['build', '--build-context', `localhost/amd64-only:1=docker-archive:${join(dir, 'base.tar')}`, '--platform', 'linux/amd64,linux/arm64', '-t', 'multi:1', '-o', `oci:${out}`, dir], { env: qemu.env });
  t.is(run.exitCode, 1, run.stderr);
  t.regex(run.stderr, /base\.tar is an image for linux\/amd64, not linux\/arm64/);
  t.is(qemu.starts().length, 0, 'the amd64 image was not built first');
  t.false(existsSync(out));
});

test('run-as-root with platforms over a base that has only one of them: a spec error naming the platform and the base, before anything is built; no output nor temp layout left', async (t) => {
  const dir = tempDir(t);
  await writeDockerArchive(join(dir, 'base.tar'), [{ repoTag: 'localhost/amd64-only:1', layers: [await layerTar([{ path: 'etc/base', content: 'base\n' }])] }]);
  mkdirSync(join(dir, 'root'));
  writeFileSync(join(dir, 'root', 'app'), 'app\n');
  // no runAsRoot: each platform's layer is made on the host, so this needs no VM
  writeFileSync(join(dir, 'spec.json'), JSON.stringify({ name: 'localhost/dockvm-test/half', tag: '1', fromImage: 'base.tar', copyToRoot: 'root', platforms: ['linux/amd64', 'linux/arm64'], output: 'oci:out' }));
  const qemu = await qemuCounter(t);
  const run = await runDockvm(['run-as-root', join(dir, 'spec.json')], { env: qemu.env });
  t.is(run.exitCode, 1, run.stderr);
  t.regex(run.stderr, /^dockvm: platforms: linux\/arm64 cannot be built over fromImage: \S+base\.tar is an image for linux\/amd64, not linux\/arm64$/m);
  t.deepEqual(readdirSync(dir).sort(), ['base.tar', 'root', 'spec.json'], 'no output, no temp layout beside it');
  t.is(qemu.starts().length, 0);
});

const hostTest = needs(hasDebianArm64Fixture() && hasTool('skopeo'), 'the arm64 Debian fixture or skopeo is missing (scripts/setup installs and builds them)', test);

hostTest('COPY --from=IMAGE reads the index\'s image of the stage\'s platform, not the host\'s (no VM: the last step fails on the host)', async (t) => {
  const base = await indexOfFixtures();
  const dir = tempDir(t);
  const qemu = await qemuCounter(t);
  for (const [architecture, triplet] of [['amd64', 'x86_64-linux-gnu'], ['arm64', 'aarch64-linux-gnu']] as const) {
    // each source exists only in that platform's image; the last step's does in neither, so nothing boots
    writeFileSync(
      join(dir, 'Containerfile'),
      [
        'FROM scratch',
        `COPY --from=${BASE} /usr/lib/${triplet}/libc.so.6 /libc`,
        `COPY --from=${BASE} /no-such-file /`,
        '',
      ].join('\n'),
    );
    const run = await runDockvm(['build', '--build-context', `${BASE}=${base}`, '--platform', `linux/${architecture}`, '-t', 'from-image:1', '-o', join(dir, 'out.tar'), dir], { env: qemu.env });
    t.is(run.exitCode, 1, run.stderr);
    t.regex(run.stderr, /Containerfile:3: COPY \/no-such-file \/: COPY --from \(\S+\): "\/no-such-file" not found/, `linux/${architecture}: the ${triplet} sources were found`);
  }
  t.is(qemu.starts().length, 0);
});
