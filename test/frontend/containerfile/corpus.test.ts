// The corpus (test/containerfiles/): each real-ish Containerfile planned over the Debian fixture's
// real config. A few properties a person would check are asserted per file; the whole plan (paths
// made relative) is snapshotted, so a change in what any instruction plans shows up in review.
import test from 'ava';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { planContainerfile, type ResolveBase } from '../../../src/frontend/containerfile/planner.js';
import type { ImageConfig } from '../../../src/image/config.js';
import type { Plan, Step } from '../../../src/plan/plan.js';
import { openImage } from '../../../src/transport/open.js';
import { DEBIAN_REPO_TAG, debianFixture } from '../../fixtures/debian.js';

const corpus = fileURLToPath(new URL('../../containerfiles/', import.meta.url));
const cases = readdirSync(corpus).filter((name) => statSync(join(corpus, name)).isDirectory());

let fixtureConfig: Promise<ImageConfig> | undefined;

/** The fixture archive stands in for the registry name it is loaded as (read once). */
const resolveBase: ResolveBase = async ({ ref }) => {
  if (ref !== `docker://${DEBIAN_REPO_TAG}`) throw new Error(`the corpus uses only ${DEBIAN_REPO_TAG}, not ${ref}`);
  fixtureConfig ??= (async () => {
    const image = await openImage(`docker-archive:${debianFixture()}`);
    try {
      return image.config;
    } finally {
      await image.close();
    }
  })();
  const config = await fixtureConfig;
  return { config: structuredClone(config.config ?? {}), platform: { os: config.os, architecture: config.architecture } };
};

async function planCase(name: string): Promise<Plan> {
  return planContainerfile({ contextDir: join(corpus, name), resolveBase });
}

/** The plan with the checkout's absolute paths taken out, for a snapshot that holds on any machine. */
function portable(plan: Plan, name: string): unknown {
  const dir = join(corpus, name);
  return JSON.parse(JSON.stringify(plan).replaceAll(dir, '<context>'));
}

const history = (steps: Step[]) => steps.map((s) => s.createdBy);
const layers = (steps: Step[]) => steps.filter((s) => !s.emptyLayer).length;

test('the corpus has every case the README lists', (t) => {
  t.deepEqual(cases.sort(), ['add-tar', 'args-env', 'deletes', 'dockerignore', 'metadata', 'multistage-chown', 'onbuild', 'opaque', 'shell-exec', 'special-files']);
});

for (const name of cases) {
  test(`corpus ${name}: plans, and its plan is as snapshotted`, async (t) => {
    const plan = await planCase(name);
    t.true(plan.stages.every((s) => s.platform.architecture === 'amd64'));
    t.snapshot(portable(plan, name));
  });
}

test('corpus multistage-chown: two stages, COPY --from with --chown and --chmod', async (t) => {
  const plan = await planCase('multistage-chown');
  t.is(plan.stages.length, 2);
  const final = plan.stages[1]!;
  t.deepEqual(history(final.steps).slice(1, 4), [
    'COPY --chown=app:app /out/bin/ /usr/local/bin/ # buildkit',
    'COPY --chown=1500:1500 --chmod=0640 /out/share/data.txt /home/app/data.txt # buildkit',
    'COPY /out/share /opt/share # buildkit',
  ]);
  t.deepEqual(final.config.Cmd, ['hello']);
  t.is(final.config.User, 'app');
});

test('corpus deletes, opaque, special-files: one layer per RUN', async (t) => {
  for (const [name, runs] of [['deletes', 4], ['opaque', 3], ['special-files', 2]] as const) {
    const steps = (await planCase(name)).stages[0]!.steps;
    t.is(layers(steps), runs, name);
    t.true(steps.every((s) => s.kind === 'run'), name);
  }
});

test('corpus dockerignore: COPY . picks what .dockerignore keeps', async (t) => {
  const copy = (await planCase('dockerignore')).stages[0]!.steps[0]!;
  if (copy.kind !== 'copy') return t.fail('the first step is not a COPY');
  t.deepEqual(
    copy.entries.filter((e) => e.type === 'file').map((e) => e.target),
    ['.dockerignore', 'Containerfile', 'README', 'app/cache/keep.bin', 'app/index.js'],
  );
});

test('corpus add-tar: ADD unpacks the tar, ADD --unpack=false and COPY do not', async (t) => {
  const steps = (await planCase('add-tar')).stages[0]!.steps;
  t.deepEqual(steps.slice(0, 3).map((s) => s.kind === 'copy' && [s.instruction, s.unpack]), [['ADD', true], ['ADD', false], ['COPY', false]]);
});

test('corpus shell-exec: SHELL applies to later shell forms, heredocs become commands and files', async (t) => {
  const stage = (await planCase('shell-exec')).stages[0]!;
  const runs = stage.steps.filter((s) => s.kind === 'run');
  t.deepEqual(runs.map((r) => r.kind === 'run' && r.argv.slice(0, 3)), [
    ['/bin/sh', '-c', 'echo exec form > /exec.txt'],
    ['/bin/bash', '-o', 'pipefail'],
    ['/bin/bash', '-o', 'pipefail'],
    ['/bin/bash', '-o', 'pipefail'],
  ]);
  t.deepEqual(stage.config.Cmd, ['/bin/bash', '-o', 'pipefail', '-c', 'echo "shell form under SHELL"']);
  t.deepEqual(stage.config.Shell, ['/bin/bash', '-o', 'pipefail', '-c']);
  const copy = stage.steps.find((s) => s.kind === 'copy');
  t.deepEqual(copy?.kind === 'copy' && copy.inlineFiles, [{ path: 'EOF', data: 'greeting=hello\n', mode: 0o644 }]);
});

test('corpus args-env: global ARG in FROM, stage ARGs, ENV over ARG, expansion in WORKDIR/COPY/LABEL', async (t) => {
  const stage = (await planCase('args-env')).stages[0]!;
  t.deepEqual(stage.base, { kind: 'image', ref: `docker://${DEBIAN_REPO_TAG}` });
  t.is(stage.config.WorkingDir, '/opt/app/1.0');
  t.deepEqual(stage.config.Labels, { 'org.opencontainers.image.version': '1.0' });
  t.deepEqual(stage.config.Env, ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'APP_HOME=/opt/app/1.0', 'MODE=final']);
  const runs = stage.steps.filter((s) => s.kind === 'run');
  t.deepEqual(history(runs), [
    'RUN |3 APP_VERSION=1.0 PREFIX=/opt/app MODE=production /bin/sh -c echo "$APP_VERSION $MODE" > version.txt # buildkit',
    'RUN |3 APP_VERSION=1.0 PREFIX=/opt/app MODE=final /bin/sh -c echo "$MODE" > mode.txt # buildkit',
  ]);
});

test('corpus metadata: the image config as Docker writes it', async (t) => {
  const { config } = (await planCase('metadata')).stages[0]!;
  t.like(config, {
    User: 'svc',
    WorkingDir: '/var/lib/svc/data',
    StopSignal: 'SIGINT',
    Entrypoint: ['/bin/sh', '-c'],
    Cmd: ['exec sleep infinity'],
    Labels: { 'org.opencontainers.image.title': 'metadata corpus', maintainer: 'dockvm' },
    ExposedPorts: { '8080/tcp': {}, '9090/udp': {} },
    Volumes: { '/var/lib/svc/data': {}, '/var/log/svc': {} },
    Healthcheck: { Test: ['CMD-SHELL', 'test -d /var/lib/svc/data'], Interval: 30e9, Timeout: 5e9, Retries: 3 },
  });
});

test('corpus onbuild: the child stage runs the base stage\'s ONBUILD triggers first', async (t) => {
  const plan = await planCase('onbuild');
  const [base, child] = plan.stages;
  t.deepEqual(base!.config.OnBuild, ['COPY app.txt /app/', 'RUN wc -l /app/app.txt > /app/lines.txt']);
  t.deepEqual(history(child!.steps), [
    'COPY app.txt /app/ # buildkit',
    'RUN /bin/sh -c wc -l /app/app.txt > /app/lines.txt # buildkit',
    'RUN /bin/sh -c test -f /app/lines.txt # buildkit',
  ]);
  t.is(child!.config.OnBuild, undefined);
  t.deepEqual(child!.config.Labels, { stage: 'base' });
});
