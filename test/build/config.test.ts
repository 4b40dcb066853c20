import test from 'ava';
import { mergeEnv, resolveCreated, scriptEnvironment } from '../../src/build/config.js';
import { sha256 } from '../../src/image/digest.js';
import type { ImageConfig } from '../../src/image/config.js';
import { nixpkgsImageConfig } from '../../src/executor/image-config.js';
import { planSpec } from '../../src/frontend/spec/plan.js';
import { checkSpec } from '../../src/spec/load.js';

test('Env merges to one entry per name, the later value winning', (t) => {
  t.deepEqual(mergeEnv(['PATH=/bin', 'A=1', 'B=2'], ['A=3', 'C=4', 'A=5']), ['PATH=/bin', 'A=5', 'B=2', 'C=4']);
});

test('the script gets the image Env, then the spec env, PATH defaulted, HOME=/root', (t) => {
  t.deepEqual(scriptEnvironment(['LANG=C.UTF-8'], { DEBIAN_FRONTEND: 'noninteractive' }), [
    'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    'HOME=/root',
    'LANG=C.UTF-8',
    'DEBIAN_FRONTEND=noninteractive',
  ]);
  t.deepEqual(scriptEnvironment(['PATH=/opt/bin'], {})[0], 'PATH=/opt/bin');
});

test('the new config carries the base over, merges, and names the new layer', (t) => {
  const base = sha256('base');
  const layer = sha256('layer');
  const baseConfig: ImageConfig = {
    architecture: 'amd64',
    os: 'linux',
    created: '2020-01-01T00:00:00Z',
    config: { Env: ['PATH=/bin', 'A=1'], Cmd: ['bash'], Labels: { a: '1' } },
    rootfs: { type: 'layers', diff_ids: [base] },
  };
  const spec = checkSpec({ name: 'x', fromImage: 'docker://example.test/base:1', runAsRoot: 'true', config: { Env: ['A=2'], Cmd: ['/app'], Labels: { b: '2' } } }, '/specs/spec.json');
  const plan = planSpec(spec, { base: baseConfig, platform: { os: 'linux', architecture: 'amd64' }, copyTar: undefined });
  const config = nixpkgsImageConfig(plan.stages[0]!, baseConfig, [base, layer], '1970-01-01T00:00:01Z');
  t.deepEqual(config.config, { Env: ['PATH=/bin', 'A=2'], Cmd: ['/app'], Labels: { a: '1', b: '2' } });
  t.deepEqual(config.rootfs.diff_ids, [base, layer]);
  t.deepEqual(config.history, [{ created: '2020-01-01T00:00:00Z' }, { created: '1970-01-01T00:00:01Z', created_by: 'dockvm run-as-root' }]);
  // the key order run-as-root has always written (the config digest, and a derived tag, depend on it)
  t.deepEqual(Object.keys(config), ['created', 'architecture', 'os', 'config', 'rootfs', 'history']);
});

test('created: an ISO time is kept, "now" is the current time', (t) => {
  t.is(resolveCreated('1970-01-01T00:00:01Z'), '1970-01-01T00:00:01Z');
  // between the clock read before and after, to the second (the format drops milliseconds)
  const before = Math.floor(Date.now() / 1000) * 1000;
  const now = Date.parse(resolveCreated('now'));
  const after = Date.now();
  t.true(before <= now && now <= after, `${before} <= ${now} <= ${after}`);
});
