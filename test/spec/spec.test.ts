import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkSpec, loadSpec, resolveImagePath } from '../../src/spec/load.js';
import { SpecError } from '../../src/errors.js';

function problemsOf(input: unknown): string[] {
  try {
    checkSpec(input, '/specs/spec.json');
  } catch (err) {
    if (err instanceof SpecError) return [...err.problems];
    throw err;
  }
  return [];
}

test('a minimal spec gets nixpkgs defaults and paths relative to the spec file', (t) => {
  const spec = checkSpec({ name: 'registry.example.com:5000/my/image', fromImage: 'base.tar', copyToRoot: 'root' }, '/specs/spec.json');
  t.is(spec.tag, null);
  t.is(spec.fromImage, '/specs/base.tar');
  t.deepEqual(spec.copyToRoot, ['/specs/root']);
  t.is(spec.diskSize, 1024);
  t.is(spec.buildVMMemorySize, 512);
  t.is(spec.created, '1970-01-01T00:00:01Z');
  t.is(spec.uid, 0);
  t.is(spec.keepContentsDirlinks, false);
  t.is(spec.extraCommands, '');
  t.is(spec.network, false);
  t.is(spec.architecture, null); // the base's architecture, or the host's for FROM scratch
  t.is(spec.output, '/specs/image.tar.gz');
  t.deepEqual(spec.warnings, []);
});

test('contents alone works, with a deprecation warning', (t) => {
  const spec = checkSpec({ name: 'a', contents: ['x', 'y.tar'] }, '/specs/spec.json');
  t.deepEqual(spec.copyToRoot, ['/specs/x', '/specs/y.tar']);
  t.regex(spec.warnings.join(), /contents is deprecated/);
});

test('a spec with every kind of mistake gets all of its errors, each naming its field', (t) => {
  const problems = problemsOf({
    name: 'My/Image',
    tag: '-bad',
    nmae: 'typo',
    copyToRoot: 'a',
    contents: 'b',
    fromImage: 'base.tar',
    fromImageName: 'only-name',
    diskSize: -5,
    buildVMMemorySize: 'lots',
    created: 'yesterday',
    architecture: 'x86',
    uid: 1.5,
    env: { 'BAD-NAME': 'x', OK: 3 },
    config: { Cmd: 'not a list', Env: ['NOEQUALS'] },
    output: 'out.zip',
    network: 'yes',
  });
  const expectFor = (field: string, pattern: RegExp) =>
    t.true(
      problems.some((p) => p.startsWith(`${field}:`) && pattern.test(p)),
      `${field} ${pattern} in:\n${problems.join('\n')}`,
    );
  expectFor('name', /lowercase/);
  expectFor('tag', /not a valid tag/);
  expectFor('nmae', /unknown field/);
  expectFor('contents', /set only copyToRoot/);
  expectFor('fromImageTag', /set both or neither/);
  expectFor('diskSize', /^diskSize: too small: expected number to be >0$/i); // -5
  expectFor('buildVMMemorySize', /number/);
  expectFor('created', /ISO-8601/);
  expectFor('architecture', /amd64/);
  expectFor('uid', /int/);
  expectFor('env.BAD-NAME', /variable name/);
  expectFor('env.OK', /string/);
  expectFor('config.Cmd', /array/);
  expectFor('config.Env.0', /NAME=value/);
  expectFor('output', /\.tar/);
  expectFor('network', /boolean/);
});

test('name is required; a non-object is refused', (t) => {
  t.true(problemsOf({}).some((p) => p.startsWith('name: required')));
  t.deepEqual(problemsOf([1]), ['the spec must be a JSON object']);
});

test('loadSpec names the file when it is missing or not JSON', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-spec-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bad = join(dir, 'bad.json');
  writeFileSync(bad, '{ "name": ');
  const err = await t.throwsAsync(loadSpec(bad), { instanceOf: SpecError });
  t.regex(err!.message, /bad\.json is not valid JSON/);
  await t.throwsAsync(loadSpec(join(dir, 'missing.json')), { instanceOf: SpecError, message: /cannot read spec .*missing\.json: ENOENT/ });
});

test('image references keep their transport while their path becomes absolute', (t) => {
  t.is(resolveImagePath('oci:layout:v1', '/s'), 'oci:/s/layout:v1');
  t.is(resolveImagePath('docker-archive:a.tar:x/y:1', '/s'), 'docker-archive:/s/a.tar:x/y:1');
  t.is(resolveImagePath('docker://localhost:5000/a:b', '/s'), 'docker://localhost:5000/a:b');
  t.is(resolveImagePath('/abs/base.tar.gz', '/s'), '/abs/base.tar.gz');
});

test('platforms: normalised linux platforms; a bad, repeated or empty list, an architecture that disagrees, several into a docker-archive: each named', (t) => {
  const spec = checkSpec({ name: 'multi', platforms: ['linux/amd64', 'linux/arm64/v8'], output: 'oci:out' }, '/specs/spec.json');
  t.deepEqual(spec.platforms, ['linux/amd64', 'linux/arm64']);
  t.is(checkSpec({ name: 'one' }, '/specs/spec.json').platforms, null);
  t.deepEqual(checkSpec({ name: 'one', platforms: ['linux/arm64'], architecture: 'arm64' }, '/specs/spec.json').platforms, ['linux/arm64'], 'one platform into an archive, agreeing with architecture');
  t.deepEqual(problemsOf({ name: 'multi', platforms: ['windows/amd64', 'linux/nonsense', 'linux/arm64', 'arm64'], output: 'oci:out' }), [
    'platforms.0: "windows/amd64" is not a linux platform; write linux/ARCH[/VARIANT], e.g. linux/arm64',
    'platforms.1: "linux/nonsense" is not a linux platform; write linux/ARCH[/VARIANT], e.g. linux/arm64',
    'platforms.3: linux/arm64 is listed twice',
  ]);
  t.deepEqual(problemsOf({ name: 'multi', platforms: [] }), ['platforms: list at least one platform, e.g. ["linux/amd64", "linux/arm64"]']);
  t.deepEqual(problemsOf({ name: 'multi', platforms: ['linux/amd64', 'linux/arm64'], architecture: 'amd64', output: 'oci:out' }), [
    'architecture: "amd64" disagrees with platforms (linux/amd64, linux/arm64); drop architecture (platforms says what to build) or list only amd64',
  ]);
  t.deepEqual(problemsOf({ name: 'multi', platforms: ['linux/amd64', 'linux/arm64'] }), [
    'output: the default (NAME.tar.gz) is a docker-archive, which holds one platform\'s image; platforms lists 2: set output to oci:DIR (an OCI layout holding their index)',
  ]);
  t.deepEqual(problemsOf({ name: 'multi', platforms: ['linux/amd64', 'linux/arm64'], output: 'multi.tar' }), [
    'output: "multi.tar" is a docker-archive, which holds one platform\'s image; platforms lists 2: set output to oci:DIR (an OCI layout holding their index)',
  ]);
});
