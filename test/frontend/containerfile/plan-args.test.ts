// ARG and ENV scoping and expansion, as BuildKit defines them (docs "Understand how ARG and FROM
// interact", "Scope", "Using ARG variables", "Predefined ARGs", and dockerfile_args_test.go).
import test from 'ava';
import type { RunStep } from '../../../src/plan/plan.js';
import { BASE_PATH, plan, planError, targetSteps } from './helpers.js';

const runs = (steps: ReturnType<typeof targetSteps>) => steps.filter((s): s is RunStep => s.kind === 'run');

test('a global ARG is usable in FROM, and a --build-arg overrides its default', async (t) => {
  const file = 'ARG VERSION=12\nFROM debian:${VERSION}-slim\n';
  t.deepEqual((await plan(t, file)).stages[0]!.base, { kind: 'image', ref: 'docker://debian:12-slim' });
  t.deepEqual((await plan(t, file, { buildArgs: { VERSION: '13' } })).stages[0]!.base, { kind: 'image', ref: 'docker://debian:13-slim' });
});

test('a global ARG is not in scope in a stage until the stage declares it; ARG NAME imports the default', async (t) => {
  const p = await plan(t, 'ARG A=global\nFROM x\nRUN echo 1\nARG A\nRUN echo 2\n');
  const [before, after] = runs(targetSteps(p));
  t.false(before!.env.some((e) => e.startsWith('A=')));
  t.true(after!.env.includes('A=global'));
  t.is(after!.createdBy, 'RUN |1 A=global /bin/sh -c echo 2 # buildkit');
});

test('an ARG used in FROM without a value is an error naming it and what to do', async (t) => {
  const err = await planError(t, 'ARG BASE\nFROM ${BASE}\n');
  t.like(err, { line: 2, instruction: 'FROM' });
  t.regex(err.message, /Containerfile:2: FROM: \$BASE in "\$\{BASE\}" has no value: declare it with a default before the first FROM \(ARG BASE=…\) or pass --build-arg BASE=…$/);
  t.regex((await planError(t, 'FROM debian:$TAG\n')).message, /\$TAG in "debian:\$TAG" has no value/);
  // a default in the expansion is a value
  t.deepEqual((await plan(t, 'FROM debian:${TAG:-12}\n')).stages[0]!.base, { kind: 'image', ref: 'docker://debian:12' });
});

test('an ARG declared in a stage sets the RUN environment but not the image config', async (t) => {
  const p = await plan(t, 'FROM x\nARG MODE=fast\nRUN make\n');
  const [run] = runs(targetSteps(p));
  t.true(run!.env.includes('MODE=fast'));
  t.deepEqual(p.stages[0]!.config.Env, [BASE_PATH]);
  t.is(targetSteps(p)[0]!.createdBy, 'ARG MODE=fast');
});

test('RUN history lists the stage\'s ARGs once each, first place, last value (moby/buildkit#5505)', async (t) => {
  const p = await plan(t, 'FROM busybox\nARG foo=bar\nARG bar=123\nARG foo=bar2\nRUN ls /etc/\n');
  t.deepEqual(targetSteps(p).map((s) => s.createdBy), ['ARG foo=bar', 'ARG bar=123', 'ARG foo=bar2', 'RUN |2 foo=bar2 bar=123 /bin/sh -c ls /etc/ # buildkit']);
});

test('ENV after ARG of the same name wins; ARG after ENV wins in RUN, the config keeps ENV (BuildKit\'s order)', async (t) => {
  const p = await plan(t, 'FROM x\nARG V=arg\nENV V=env\nRUN echo $V\n', { buildArgs: { V: 'cli' } });
  t.true(runs(targetSteps(p))[0]!.env.includes('V=env'));
  t.is(runs(targetSteps(p))[0]!.createdBy, 'RUN |1 V=env /bin/sh -c echo $V # buildkit');
  const q = await plan(t, 'FROM x\nENV V=env\nARG V=arg\nRUN echo $V\n');
  t.true(runs(targetSteps(q))[0]!.env.includes('V=arg'));
  t.deepEqual(q.stages[0]!.config.Env, [BASE_PATH, 'V=env']);
});

test('ARG default and ENV values expand; the documented my_arg example (testDefaultEnvWithArgs)', async (t) => {
  const file = 'ARG image=idlebox\nFROM busy${image#idle} AS build\nARG my_arg\nENV my_arg "my_arg=${my_arg:-def_val}"\nENV my_trimmed_arg "${my_arg%%e*}"\n';
  for (const [args, expected] of [
    [{}, ['my_arg=my_arg=def_val', 'my_trimmed_arg=my_arg=d']],
    [{ my_arg: '' }, ['my_arg=my_arg=def_val', 'my_trimmed_arg=my_arg=d']],
    [{ my_arg: 'override' }, ['my_arg=my_arg=override', 'my_trimmed_arg=my_arg=ov']],
  ] as const) {
    const p = await plan(t, file, { buildArgs: args });
    t.deepEqual(p.stages[0]!.base, { kind: 'image', ref: 'docker://busybox' });
    t.deepEqual(p.stages[0]!.config.Env!.slice(1), [...expected], JSON.stringify(args));
  }
});

test('all pairs of one ENV see the variables as they were before it', async (t) => {
  const p = await plan(t, 'FROM x\nENV A=1\nENV A=2 B=$A\n');
  t.deepEqual(p.stages[0]!.config.Env, [BASE_PATH, 'A=2', 'B=1']);
  t.is(targetSteps(p)[1]!.createdBy, 'ENV A=2 B=1');
});

test('the base image\'s Env is in scope for expansion (WORKDIR $GOPATH)', async (t) => {
  const p = await plan(t, 'FROM golang\nWORKDIR $GOPATH/src/app\n', { bases: { 'docker://golang': { Env: ['PATH=/go/bin', 'GOPATH=/go'] } } });
  t.is(p.stages[0]!.config.WorkingDir, '/go/src/app');
});

test('RUN is not expanded (the shell does it); CMD, ENTRYPOINT, HEALTHCHECK and ONBUILD neither', async (t) => {
  const p = await plan(t, 'FROM x\nENV X=1\nRUN echo $X\nCMD echo $X\nENTRYPOINT ["$X"]\nHEALTHCHECK CMD test $X\nONBUILD RUN echo $X\n');
  const config = p.stages[0]!.config;
  t.deepEqual(runs(targetSteps(p))[0]!.argv, ['/bin/sh', '-c', 'echo $X']);
  // the CMD came before the ENTRYPOINT in this stage, so it stays
  t.deepEqual(config.Cmd, ['/bin/sh', '-c', 'echo $X']);
  t.deepEqual(config.Entrypoint, ['$X']);
  t.deepEqual((config.Healthcheck as { Test: string[] }).Test, ['CMD-SHELL', 'test $X']);
  t.deepEqual(config.OnBuild, ['RUN echo $X']);
});

test('the platform ARGs are predefined globally: usable in FROM, in a stage after ARG NAME', async (t) => {
  const p = await plan(t, 'FROM --platform=$BUILDPLATFORM x AS build\nARG TARGETARCH TARGETPLATFORM\nRUN echo $TARGETARCH\nFROM y-${TARGETARCH}\nCOPY --from=build /a /a\n', {
    platform: 'linux/arm64',
  });
  const build = p.stages[0]!;
  t.is(build.platform.architecture, process.arch === 'arm64' ? 'arm64' : 'amd64');
  t.true(runs(build.steps)[0]!.env.includes('TARGETARCH=arm64'));
  t.true(runs(build.steps)[0]!.env.includes('TARGETPLATFORM=linux/arm64'));
  t.deepEqual(p.stages[1]!.base, { kind: 'image', ref: 'docker://y-arm64' });
  t.deepEqual(p.stages[1]!.platform, { os: 'linux', architecture: 'arm64' });
});

test('proxy build args reach RUN without an ARG, and stay out of the history', async (t) => {
  const p = await plan(t, 'FROM x\nRUN apt-get update\n', { buildArgs: { HTTP_PROXY: 'http://proxy:3128', no_proxy: 'localhost' } });
  const [run] = runs(targetSteps(p));
  t.deepEqual(run!.proxyEnv, ['HTTP_PROXY=http://proxy:3128', 'no_proxy=localhost']);
  t.false(run!.env.some((e) => e.includes('proxy')));
  t.is(run!.createdBy, 'RUN /bin/sh -c apt-get update # buildkit');
  t.deepEqual(p.warnings, []);
});

test('a --build-arg no ARG declares is a warning, not an error', async (t) => {
  const p = await plan(t, 'FROM x\nRUN true\n', { buildArgs: { UNUSED: '1' } });
  t.deepEqual(p.warnings, ['build args not declared by any ARG were not used: UNUSED']);
});

test('an expansion syntax error points at the line and column', async (t) => {
  const err = await planError(t, 'FROM x\nENV A=1 \\\n  B=${A\n');
  t.like(err, { line: 3, instruction: 'ENV' });
  t.is(err.column, 5);
  t.regex(err.message, /Containerfile:3:5: ENV: syntax error: missing '}'$/);
});

test('${VAR:?message} stops the build with the message', async (t) => {
  const err = await planError(t, 'FROM x\nARG TOKEN\nLABEL t="${TOKEN:?set it with --build-arg TOKEN=…}"\n');
  t.regex(err.message, /Containerfile:3:10: LABEL: TOKEN: set it with --build-arg TOKEN=…$/);
});

test('a bad --platform and a missing Containerfile are errors about the build, without a line', async (t) => {
  const err = await planError(t, 'FROM x\n', { platform: 'linux//arm64' });
  t.regex(err.message, /Containerfile: invalid platform "linux\/\/arm64": write it as os\/arch\[\/variant\]/);
  t.is(err.line, 0);
  const { planContainerfile } = await import('../../../src/frontend/containerfile/planner.js');
  const missing = await t.throwsAsync(planContainerfile({ contextDir: '/nonexistent-context', resolveBase: async () => ({ config: {}, platform: { os: 'linux', architecture: 'amd64' } }) }));
  t.regex(missing!.message, /^\/nonexistent-context: no Containerfile or Dockerfile in \/nonexistent-context; name one with -f FILE$/);
});
