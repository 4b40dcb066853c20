// Each instruction as a plan step: the layer or config change it makes and its history entry, written
// as BuildKit writes it (dockerfile2llb/convert.go, dockerfile_history_test.go).
import test from 'ava';
import type { BaseRequest } from '../../../src/frontend/containerfile/planner.js';
import { applyConfigChange, type ImageState } from '../../../src/plan/config-change.js';
import type { ConfigStep, CopyStep, RunStep, Step, WorkdirStep } from '../../../src/plan/plan.js';
import { BASE_PATH, plan, planError, targetSteps } from './helpers.js';

const step = <K extends Step['kind']>(steps: Step[], kind: K, n = 0): Extract<Step, { kind: K }> =>
  steps.filter((s) => s.kind === kind)[n] as Extract<Step, { kind: K }>;

test('RUN shell form runs under /bin/sh -c; exec form as written', async (t) => {
  const steps = targetSteps(await plan(t, 'FROM x\nRUN apt-get update\nRUN ["echo", "hi there"]\n'));
  t.deepEqual(step(steps, 'run').argv, ['/bin/sh', '-c', 'apt-get update']);
  t.is(step(steps, 'run').createdBy, 'RUN /bin/sh -c apt-get update # buildkit');
  t.deepEqual(step(steps, 'run', 1).argv, ['echo', 'hi there']);
  t.is(step(steps, 'run', 1).createdBy, 'RUN echo hi there # buildkit');
  t.false(step(steps, 'run').emptyLayer);
});

test('RUN runs as the USER in the WORKDIR, with the image Env', async (t) => {
  const run = step(targetSteps(await plan(t, 'FROM x\nENV A=1\nUSER app:staff\nWORKDIR /srv\nRUN id\n')), 'run');
  t.like(run, { user: 'app:staff', workdir: '/srv', network: 'default' });
  t.deepEqual(run.env, [BASE_PATH, 'A=1']);
});

test('SHELL changes the shell of RUN, CMD and ENTRYPOINT shell forms', async (t) => {
  const p = await plan(t, 'FROM x\nSHELL ["/bin/bash", "-eo", "pipefail", "-c"]\nRUN a | b\nENTRYPOINT exec app\n');
  const steps = targetSteps(p);
  t.is(steps[0]!.createdBy, 'SHELL [/bin/bash -eo pipefail -c]');
  t.deepEqual(step(steps, 'run').argv, ['/bin/bash', '-eo', 'pipefail', '-c', 'a | b']);
  t.deepEqual(p.stages[0]!.config.Entrypoint, ['/bin/bash', '-eo', 'pipefail', '-c', 'exec app']);
  t.deepEqual(p.stages[0]!.config.Shell, ['/bin/bash', '-eo', 'pipefail', '-c']);
});

test('a RUN heredoc alone is the command; with a shebang it is run as a file under /dev/pipes', async (t) => {
  const steps = targetSteps(await plan(t, 'FROM x\nRUN <<EOF\necho one\necho two\nEOF\nRUN <<EOT\n#!/usr/bin/env python3\nprint(1)\nEOT\nRUN <<-EOF\n\techo tab\n\tEOF\n'));
  t.deepEqual(step(steps, 'run').argv, ['/bin/sh', '-c', 'echo one\necho two\n']);
  t.is(step(steps, 'run').createdBy, 'RUN /bin/sh -c echo one\necho two\n # buildkit');
  t.deepEqual(step(steps, 'run', 1).argv, ['/bin/sh', '-c', '/dev/pipes/EOT']);
  t.deepEqual(step(steps, 'run', 1).inlineFiles, [{ path: '/dev/pipes/EOT', data: '#!/usr/bin/env python3\nprint(1)\n', mode: 0o755 }]);
  t.deepEqual(step(steps, 'run', 2).argv, ['/bin/sh', '-c', 'echo tab\n']);
});

test('a RUN heredoc inside a longer command goes to the shell with its body and delimiter', async (t) => {
  const run = step(targetSteps(await plan(t, 'FROM x\nRUN <<FILE1 cat > /a && <<\'FILE2\' cat > /b\none $X\nFILE1\ntwo\nFILE2\n')), 'run');
  t.deepEqual(run.argv, ['/bin/sh', '-c', "<<FILE1 cat > /a && <<'FILE2' cat > /b\none $X\nFILE1\ntwo\nFILE2"]);
});

test('RUN --mount: BuildKit\'s defaults for cache, bind, tmpfs and secret mounts', async (t) => {
  const file = [
    'FROM x AS tools',
    'FROM x',
    'WORKDIR /src',
    'RUN --mount=type=cache,target=/root/.cache,sharing=locked --mount=target=ctx --mount=type=tmpfs,target=/tmp,size=64m --mount=type=secret,id=token --mount=type=bind,from=tools,source=/usr/bin,target=/t,rw make',
    '',
  ].join('\n');
  const run = step(targetSteps(await plan(t, file)), 'run');
  t.deepEqual(run.mounts, [
    { type: 'cache', target: '/root/.cache', id: '/root/.cache', sharing: 'locked', readonly: false, mode: 0o755, uid: 0, gid: 0 },
    { type: 'bind', target: '/src/ctx', source: '/', from: { kind: 'context' }, readwrite: false },
    { type: 'tmpfs', target: '/tmp', size: 64 * 1024 * 1024 },
    { type: 'secret', id: 'token', target: '/run/secrets/token', required: false, mode: 0o400, uid: 0, gid: 0 },
    { type: 'bind', target: '/t', source: '/usr/bin', from: { kind: 'stage', stage: 0 }, readwrite: true },
  ]);
  t.regex(run.createdBy!, /^RUN \/bin\/sh -c make # buildkit$/);
});

test('RUN --mount values are expanded; a bad mount is an error naming --mount', async (t) => {
  const run = step(targetSteps(await plan(t, 'FROM x\nARG DIR=/cache\nRUN --mount=type=cache,target=$DIR,id=c-$DIR true\n')), 'run');
  t.like(run.mounts[0], { target: '/cache', id: 'c-/cache' });
  for (const [mount, reason] of [
    ['type=ssh', /type=ssh is not supported/],
    ['type=volume,target=/x', /unsupported mount type "volume"/],
    ['type=cache,target=/x,size=1m', /unexpected key 'size' for mount type 'cache'/],
    ['type=bind,target=/x,mode=0700', /mode not allowed for "bind" type mounts/],
    ['type=cache', /needs target=/],
    ['type=cache,target=/x,colour=red', /unexpected key 'colour'/],
    ['type=bind,target=/x,from=$S', /doesn't support variable expansion/],
  ] as const) {
    const err = await planError(t, `FROM x\nRUN --mount=${mount} true\n`);
    t.like(err, { instruction: 'RUN', flag: '--mount', line: 2 }, mount);
    t.regex(err.reason, reason, mount);
  }
});

test('RUN --network=none is carried; --network=default is the default', async (t) => {
  const steps = targetSteps(await plan(t, 'FROM x\nRUN --network=none true\nRUN true\n'));
  t.is(step(steps, 'run').network, 'none');
  t.is(step(steps, 'run', 1).network, 'default');
});

test('CMD and ENTRYPOINT: config as Docker writes it, history with %q lists', async (t) => {
  const p = await plan(t, 'FROM x\nCMD echo "hi"\nENTRYPOINT ["/docker-entrypoint.sh"]\n', { bases: {} });
  const steps = targetSteps(p);
  t.is(steps[0]!.createdBy, 'CMD ["/bin/sh" "-c" "echo \\"hi\\""]');
  t.is(steps[1]!.createdBy, 'ENTRYPOINT ["/docker-entrypoint.sh"]');
  t.deepEqual(p.stages[0]!.config.Cmd, ['/bin/sh', '-c', 'echo "hi"']);
  t.is(p.stages[0]!.config.ArgsEscaped, true);
});

test('ENTRYPOINT drops a CMD inherited from the base, but keeps one set earlier in the stage', async (t) => {
  const bases = { 'docker://nginx': { Env: [BASE_PATH], Cmd: ['nginx', '-g', 'daemon off;'] } };
  t.is((await plan(t, 'FROM nginx\nENTRYPOINT ["/e"]\n', { bases })).stages[0]!.config.Cmd, undefined);
  t.deepEqual((await plan(t, 'FROM nginx\nCMD ["x"]\nENTRYPOINT ["/e"]\n', { bases })).stages[0]!.config.Cmd, ['x']);
  t.is((await plan(t, 'FROM nginx\nCMD []\n', { bases })).stages[0]!.config.Cmd, undefined);
});

test('EXPOSE sorts ports as written, expands ranges, defaults to tcp (dockerfile_history_test)', async (t) => {
  const p = await plan(t, 'FROM x\nEXPOSE 5000 2375 1234/udp 8000-8002/TCP\n');
  t.is(targetSteps(p)[0]!.createdBy, 'EXPOSE [1234/udp 2375/tcp 5000/tcp 8000/tcp 8001/tcp 8002/tcp]');
  t.deepEqual(Object.keys(p.stages[0]!.config.ExposedPorts!), ['1234/udp', '2375/tcp', '5000/tcp', '8000/tcp', '8001/tcp', '8002/tcp']);
  t.regex((await planError(t, 'FROM x\nEXPOSE 80/icmp\n')).message, /EXPOSE: invalid port: "80\/icmp": invalid proto: icmp/);
  t.regex((await planError(t, 'FROM x\nEXPOSE 99999\n')).message, /out of range/);
});

test('LABEL, VOLUME, USER, STOPSIGNAL, MAINTAINER: config and history', async (t) => {
  const p = await plan(t, 'FROM x\nARG V=1.0\nLABEL org.opencontainers.image.version=$V "with space"="a b"\nVOLUME ["/data", "/logs"]\nVOLUME /cache\nUSER 1000:1000\nSTOPSIGNAL SIGQUIT\nMAINTAINER me <me@example.com>\n');
  const config = p.stages[0]!.config;
  t.deepEqual(config.Labels, { 'org.opencontainers.image.version': '1.0', 'with space': 'a b' });
  t.deepEqual(config.Volumes, { '/data': {}, '/logs': {}, '/cache': {} });
  t.is(config.User, '1000:1000');
  t.is(config.StopSignal, 'SIGQUIT');
  t.is(p.stages[0]!.author, 'me <me@example.com>');
  t.deepEqual(targetSteps(p).map((s) => s.createdBy), [
    'ARG V=1.0',
    'LABEL org.opencontainers.image.version=1.0 with space=a b',
    'VOLUME [/data /logs]',
    'VOLUME [/cache]',
    'USER 1000:1000',
    'STOPSIGNAL SIGQUIT',
    'MAINTAINER me <me@example.com>',
  ]);
  t.true(targetSteps(p).every((s) => s.emptyLayer));
  t.regex((await planError(t, 'FROM x\nSTOPSIGNAL SIGFOO\n')).message, /STOPSIGNAL: invalid signal: SIGFOO/);
});

test('HEALTHCHECK: Docker\'s config (durations in ns, zeros left out) and BuildKit\'s %+v history', async (t) => {
  const p = await plan(t, 'FROM x\nHEALTHCHECK --interval=30s --timeout=1m30s --retries=3 CMD curl -f http://localhost/\n');
  t.deepEqual(p.stages[0]!.config.Healthcheck, { Test: ['CMD-SHELL', 'curl -f http://localhost/'], Interval: 30e9, Timeout: 90e9, Retries: 3 });
  t.is(targetSteps(p)[0]!.createdBy, 'HEALTHCHECK {Test:[CMD-SHELL curl -f http://localhost/] Interval:30s Timeout:1m30s StartPeriod:0s StartInterval:0s Retries:3}');
  const none = await plan(t, 'FROM x\nHEALTHCHECK NONE\n');
  t.deepEqual(none.stages[0]!.config.Healthcheck, { Test: ['NONE'] });
  const err = await planError(t, 'FROM x\nHEALTHCHECK --interval=soon CMD true\n');
  t.like(err, { flag: '--interval', instruction: 'HEALTHCHECK' });
});

test('WORKDIR resolves against the previous one, makes a layer, and "/" makes none', async (t) => {
  const p = await plan(t, 'FROM x\nUSER app\nWORKDIR /a\nWORKDIR b/../c\nWORKDIR /\n');
  const workdirs = targetSteps(p).filter((s): s is WorkdirStep => s.kind === 'workdir');
  t.deepEqual(workdirs.map((w) => [w.path, w.createdBy, w.emptyLayer, w.user]), [
    ['/a', 'WORKDIR /a', false, 'app'],
    ['/a/c', 'WORKDIR /a/c', false, 'app'],
    ['/', 'WORKDIR /', true, 'app'],
  ]);
});

test('COPY: dest relative to WORKDIR, history with --chown/--chmod but not --from or --link', async (t) => {
  const p = await plan(t, 'FROM x AS b\nFROM x\nWORKDIR /app\nCOPY --from=b --chown=app:app --chmod=0755 --link /out/bin ./bin/\nCOPY a.txt .\n', { files: { 'a.txt': 'a' } });
  const [fromStage, local] = targetSteps(p).filter((s): s is CopyStep => s.kind === 'copy');
  t.like(fromStage, { from: { kind: 'stage', stage: 0 }, patterns: ['/out/bin'], dest: '/app/bin/', destIsDir: true, chown: 'app:app', chmod: 0o755, link: true, entries: [] });
  t.is(fromStage!.createdBy, 'COPY --chown=app:app --chmod=0755 /out/bin ./bin/ # buildkit');
  t.like(local, { dest: '/app/', destIsDir: true, entries: [{ source: 'a.txt', target: 'a.txt', type: 'file', named: true }] });
  t.is(local!.createdBy, 'COPY a.txt . # buildkit');
});

test('COPY of one file to a path without a slash names the file; several sources need a slash', async (t) => {
  const one = step(targetSteps(await plan(t, 'FROM x\nCOPY a.txt /etc/app.conf\n', { files: { 'a.txt': 'a' } })), 'copy');
  t.like(one, { dest: '/etc/app.conf', destIsDir: false, entries: [{ source: 'a.txt', target: '' }] });
  const err = await planError(t, 'FROM x\nCOPY a.txt b.txt /etc\n', { files: { 'a.txt': 'a', 'b.txt': 'b' } });
  t.like(err, { instruction: 'COPY', line: 2 });
  t.regex(err.message, /more than one source, the destination must be a directory and end with a \/ \("\/etc\/"\)/);
});

test('COPY --from: a stage by name or index, or an image; mistakes are errors', async (t) => {
  const p = await plan(t, 'FROM x AS builder\nFROM x\nCOPY --from=0 /a /a\nCOPY --from=nginx:1.25 /etc/nginx /etc/nginx\nCOPY --from=docker-archive:base.tar /b /b\n');
  const copies = targetSteps(p).filter((s): s is CopyStep => s.kind === 'copy');
  t.deepEqual(copies.map((c) => c.from), [
    { kind: 'stage', stage: 0 },
    { kind: 'image', ref: 'docker://nginx:1.25' },
    { kind: 'image', ref: `docker-archive:${p.context.dir}/base.tar` },
  ]);
  t.like(await planError(t, 'FROM x\nFROM y\nCOPY --from=5 /a /a\n'), { flag: '--from', line: 3 });
  t.regex((await planError(t, 'FROM x AS builder\nFROM y\nCOPY --from=biulder /a /a\n')).message, /no stage is named "biulder" \(did you mean "builder"\?/);
  t.regex((await planError(t, 'FROM x AS b\nARG S=b\nCOPY --from=$S /a /a\n')).message, /variable expansion is not supported for --from/);
  t.regex((await planError(t, 'FROM x AS a\nCOPY --from=a /a /a\n')).message, /circular dependency between stages: a -> a/);
});

test('COPY and ADD sources, destination and flags are expanded', async (t) => {
  const copy = step(targetSteps(await plan(t, 'FROM x\nARG U=app F=a.txt D=/opt\nCOPY --chown=$U:$U $F ${D}/\n', { files: { 'a.txt': 'a' } })), 'copy');
  t.like(copy, { chown: 'app:app', dest: '/opt/', patterns: ['a.txt'] });
  t.is(copy.createdBy, 'COPY --chown=app:app a.txt /opt/ # buildkit');
});

test('COPY heredocs are files; the body expands unless the delimiter is quoted', async (t) => {
  const p = await plan(t, 'FROM x\nARG NAME=world\nCOPY <<EOF <<"RAW" /etc/\nhello $NAME\nEOF\nhello $NAME\nRAW\n');
  const copy = step(targetSteps(p), 'copy');
  t.deepEqual(copy.inlineFiles, [
    { path: 'EOF', data: 'hello world\n', mode: 0o644 },
    { path: 'RAW', data: 'hello $NAME\n', mode: 0o644 },
  ]);
  t.is(copy.createdBy, 'COPY <<EOF <<RAW /etc/ # buildkit');
});

test('ADD: a local archive is unpacked, a URL downloaded with --checksum; ADD --unpack=false keeps it', async (t) => {
  const sum = `sha256:${'a'.repeat(64)}`;
  const p = await plan(t, `FROM x\nADD rootfs.tar /\nADD --checksum=${sum} https://example.com/dl/tool-1.0.tgz /opt/\nADD --unpack=false rootfs.tar /keep/\n`, { files: { 'rootfs.tar': 'tar' } });
  const [local, url, kept] = targetSteps(p).filter((s): s is CopyStep => s.kind === 'copy');
  t.like(local, { instruction: 'ADD', unpack: true, entries: [{ source: 'rootfs.tar', named: true }] });
  t.deepEqual(url!.urls, [{ url: 'https://example.com/dl/tool-1.0.tgz', filename: 'tool-1.0.tgz', checksum: sum, unpack: false }]);
  t.is(url!.createdBy, 'ADD https://example.com/dl/tool-1.0.tgz /opt/ # buildkit');
  t.false(kept!.unpack);
});

test('COPY of a URL or a git repository, a bad checksum or chmod are errors', async (t) => {
  t.regex((await planError(t, 'FROM x\nCOPY https://example.com/f /f\n')).message, /COPY: "https:\/\/example.com\/f" is a URL: .*use ADD/);
  t.regex((await planError(t, 'FROM x\nADD https://github.com/moby/buildkit.git /src\n')).message, /git repository: ADD of a git repository is not supported/);
  t.like(await planError(t, 'FROM x\nADD --checksum=md5:abc https://example.com/f /f\n'), { flag: '--checksum' });
  t.like(await planError(t, 'FROM x\nCOPY --chown=a --chmod=u+x a /a\n', { files: { a: 'a' } }), { flag: '--chmod' });
  t.like(await planError(t, 'FROM x\nCOPY --checksum=sha256:00 a /a\n', { files: { a: 'a' } }), { flag: '--checksum' });
});

test('ONBUILD triggers of a base image run first, at the FROM line, and are not inherited', async (t) => {
  const bases = { 'docker://onbuild-base': { Env: [BASE_PATH], OnBuild: ['COPY app.txt /app/', 'RUN make -C /app'] } };
  const p = await plan(t, '# comment\nFROM onbuild-base\nRUN test -f /app/app.txt\nONBUILD RUN echo mine\n', { bases, files: { 'app.txt': 'x' } });
  const steps = targetSteps(p);
  t.deepEqual(steps.map((s) => [s.kind, s.location.line]), [
    ['copy', 2],
    ['run', 2],
    ['run', 3],
    ['config', 4],
  ]);
  t.deepEqual(p.stages[0]!.baseConfig.OnBuild, undefined);
  t.deepEqual(p.stages[0]!.config.OnBuild, ['RUN echo mine']);
  t.is(steps[3]!.createdBy, null);
});

test('a stage FROM another stage runs that stage\'s ONBUILD instructions', async (t) => {
  const p = await plan(t, 'FROM x AS base\nONBUILD ENV FROM_BASE=1\nFROM base\nRUN true\n');
  t.deepEqual(p.stages[1]!.base, { kind: 'stage', stage: 0 });
  t.deepEqual(p.stages[1]!.config.Env, [BASE_PATH, 'FROM_BASE=1']);
  t.is(p.stages[1]!.config.OnBuild, undefined);
});

test('an invalid ONBUILD trigger in a base image is an error at the FROM', async (t) => {
  const err = await planError(t, 'FROM bad\n', { bases: { 'docker://bad': { OnBuild: ['COPY --nope a b'] } } });
  t.like(err, { line: 1, instruction: 'FROM' });
  t.regex(err.message, /the base image's ONBUILD trigger "COPY --nope a b" is invalid: unknown flag: --nope/);
});

test('only the stages the target needs are planned and have their bases resolved', async (t) => {
  const requests: BaseRequest[] = [];
  const p = await plan(t, 'FROM unused AS a\nFROM tools AS b\nFROM scratch AS c\nCOPY --from=b /x /x\nFROM final\n', { target: 'c', requests });
  t.deepEqual(p.stages.map((s) => s.name), ['b', 'c']);
  t.is(p.target, 1);
  t.deepEqual(requests.map((r) => r.ref), ['docker://tools']);
  t.deepEqual(p.stages[1]!.baseConfig, { Env: [BASE_PATH], WorkingDir: '/' });
  t.regex((await planError(t, 'FROM x AS a\n', { target: 'nope' })).message, /target stage "nope" could not be found \(stages: a\)/);
});

test('stages come after the stages they read, even when written later; cycles are errors', async (t) => {
  const p = await plan(t, 'FROM x AS app\nCOPY --from=assets /a /a\nFROM y AS assets\nRUN make\nFROM app\n');
  t.deepEqual(p.stages.map((s) => s.name ?? s.index), ['assets', 'app', 2]);
  t.deepEqual(step(p.stages[1]!.steps, 'copy').from, { kind: 'stage', stage: 0 });
  t.regex((await planError(t, 'FROM x AS a\nCOPY --from=b /x /x\nFROM y AS b\nCOPY --from=a /y /y\n')).message, /circular dependency between stages/);
});

test('FROM takes every IMAGE form dockvm reads; plain references are registry images', async (t) => {
  const p = await plan(t, 'FROM localhost/dockvm-fixture/debian:bookworm AS a\nFROM docker-archive:images/base.tar AS b\nFROM oci:layout:v1 AS c\nFROM docker://quay.io/x/y@sha256:' + 'b'.repeat(64) + '\nCOPY --from=a / /a\nCOPY --from=b / /b\nCOPY --from=c / /c\n');
  t.deepEqual(p.stages.map((s) => s.base), [
    { kind: 'image', ref: 'docker://localhost/dockvm-fixture/debian:bookworm' },
    { kind: 'image', ref: `docker-archive:${p.context.dir}/images/base.tar` },
    { kind: 'image', ref: `oci:${p.context.dir}/layout:v1` },
    { kind: 'image', ref: `docker://quay.io/x/y@sha256:${'b'.repeat(64)}` },
  ]);
  t.like(await planError(t, 'FROM Not_Valid\n'), { instruction: 'FROM', line: 1 });
  t.regex((await planError(t, 'FROM containers-storage:x\n')).message, /not supported/);
});

test('instructions before the first FROM other than ARG are errors; a file without FROM too', async (t) => {
  t.regex((await planError(t, 'RUN true\nFROM x\n')).message, /RUN before the first FROM/);
  t.regex((await planError(t, 'ARG A=1\n')).message, /no FROM/);
  t.regex((await planError(t, 'FROM x AS a\nFROM y AS A\n')).message, /duplicate stage name "a"/);
});

test('a stage\'s config is its base config with each step\'s change applied, in order', async (t) => {
  const p = await plan(t, 'FROM x\nENV A=1\nLABEL l=1\nWORKDIR /w\nUSER u\nEXPOSE 80\nCMD ["c"]\nENV A=2\n', { bases: { 'docker://x': { Env: [BASE_PATH, 'A=0'], Labels: { base: 'y' } } } });
  const stage = p.stages[0]!;
  let state: ImageState = { config: stage.baseConfig };
  for (const s of stage.steps) if (s.kind === 'config' || s.kind === 'workdir') state = applyConfigChange(state, (s as ConfigStep).change);
  t.deepEqual(state.config, stage.config);
  t.deepEqual(stage.config.Env, [BASE_PATH, 'A=2']);
  t.deepEqual(stage.config.Labels, { base: 'y', l: '1' });
});

test('the plan is plain data: it survives a JSON round trip unchanged', async (t) => {
  const p = await plan(t, 'FROM x AS b\nRUN --mount=type=cache,target=/c make\nFROM scratch\nCOPY --from=b /out /\nCOPY . /src/\nCMD ["/app"]\n', { files: { 'f.txt': 'f' } });
  t.deepEqual(JSON.parse(JSON.stringify(p)), p);
});
