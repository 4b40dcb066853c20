import test from 'ava';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { dockerArchive } from '../fixtures/assemble.js';
import { runDockvm } from '../helpers/peers.js';
import { configFor, gzip, sampleLayers, sha, tarOf, tempDir } from '../transport/archives.js';
import { writeBadArchives } from './bad-archives.js';

test('inspect --json: tags, platform, created, config digest, layers, Env/Cmd/Entrypoint', async (t) => {
  const { base, app } = await sampleLayers();
  const dir = await tempDir(t);
  const config = configFor([base, app], { architecture: 'arm64', variant: 'v8', config: { Env: ['A=1', 'PATH=/bin'], Entrypoint: ['/bin/sh', '-c'], Cmd: ['run'] } });
  await writeFile(join(dir, 'img.tar'), await tarOf([
    { path: 'c.json', data: config }, { path: 'l1', data: base }, { path: 'l2', data: gzip(app) },
    { path: 'manifest.json', data: JSON.stringify([{ Config: 'c.json', RepoTags: ['me/app:1', 'me/app:latest'], Layers: ['l1', 'l2'] }]) },
  ]));
  const run = await runDockvm(['inspect', 'img.tar', '--json'], { cwd: dir });
  t.is(run.exitCode, 0, run.stderr);
  t.deepEqual(JSON.parse(run.stdout), {
    reference: 'img.tar',
    repoTags: ['me/app:1', 'me/app:latest'],
    os: 'linux',
    architecture: 'arm64',
    variant: 'v8',
    created: '1970-01-01T00:00:01Z',
    configDigest: `sha256:${sha(config)}`,
    layers: [
      { digest: `sha256:${sha(base)}`, diffId: `sha256:${sha(base)}`, size: base.length, mediaType: 'application/vnd.docker.image.rootfs.diff.tar' },
      { digest: `sha256:${sha(gzip(app))}`, diffId: `sha256:${sha(app)}`, size: gzip(app).length, mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip' },
    ],
    config: { Env: ['A=1', 'PATH=/bin'], Entrypoint: ['/bin/sh', '-c'], Cmd: ['run'] },
  });
});

test('inspect prints a readable summary, and picks an image by NAME:TAG', async (t) => {
  const { base, app } = await sampleLayers();
  const dir = await tempDir(t);
  await writeFile(join(dir, 'two.tar'), await dockerArchive([{ repoTag: 'app:1', layers: [base, app] }, { repoTag: 'base:1', layers: [base] }]));
  const run = await runDockvm(['inspect', 'docker-archive:two.tar:base:1'], { cwd: dir });
  t.is(run.exitCode, 0, run.stderr);
  t.regex(run.stdout, /^Tags: +base:1$/m);
  t.regex(run.stdout, /^Platform: +linux\/amd64$/m);
  t.regex(run.stdout, /^Config: +sha256:[0-9a-f]{64}$/m);
  t.regex(run.stdout, /^Env:\n  PATH=\/usr\/local\/sbin/m);
  t.regex(run.stdout, /^Layers \(1, bottom first\):$/m);
  t.true(run.stdout.includes(`diff_id sha256:${sha(base)}`));
  t.false(run.stdout.includes(sha(app)));
  const missing = await runDockvm(['inspect', 'docker-archive:two.tar:nope:1'], { cwd: dir });
  t.is(missing.exitCode, 1);
  t.is(missing.stderr, 'dockvm: two.tar: no image tagged nope:1 in the archive (it has: app:1, base:1)\n');
});

test('inspect of bad archives: one line, exit 1', async (t) => {
  const dir = await tempDir(t);
  for (const { name, says, inspectSees } of await writeBadArchives(dir)) {
    if (!inspectSees) continue;
    const run = await runDockvm(['inspect', name], { cwd: dir });
    t.is(run.exitCode, 1, name);
    t.is(run.stdout, '', name);
    t.regex(run.stderr, new RegExp(`^dockvm: ${name.replace(/\./g, '\\.')}: [^\\n]*\\n$`), name);
    t.regex(run.stderr, says, name);
  }
  const none = await runDockvm(['inspect', 'nothing-here.tar'], { cwd: dir });
  t.is(none.stderr, 'dockvm: nothing-here.tar: no such file\n');
  // a registry nobody listens on (loopback only: tests reach no other address)
  const registry = await runDockvm(['inspect', 'docker://127.0.0.1:1/alpine:3']);
  t.is(registry.exitCode, 1);
  t.regex(registry.stderr, /^dockvm: .*127\.0\.0\.1:1/);
  const usage = await runDockvm(['inspect']);
  t.is(usage.exitCode, 2);
});
