// Reading a Containerfile into instructions: continuations, comments, the escape directive, exec vs
// shell form, heredocs, flags. Expected results follow BuildKit's parser and its tests
// (frontend/dockerfile/parser, instructions).
import test from 'ava';
import { ContainerfileError } from '../../../src/frontend/containerfile/errors.js';
import { parseInstruction, type Instruction } from '../../../src/frontend/containerfile/instructions.js';
import { readContainerfile } from '../../../src/frontend/containerfile/lines.js';

const FILE = 'Containerfile';

function parse(text: string): Instruction[] {
  const parsed = readContainerfile(text, FILE);
  return parsed.instructions.map((i) => parseInstruction(i, FILE, parsed.escape));
}

function parseError(t: import('ava').ExecutionContext, text: string): ContainerfileError {
  return t.throws(() => parse(text), { instanceOf: ContainerfileError })!;
}

/** The instruction type whose kind union holds K (several kinds share a type, e.g. CMD and SHELL). */
type InstructionOf<K extends Instruction['kind']> = Instruction extends infer I ? (I extends { kind: infer U } ? (K extends U ? I : never) : never) : never;

function only<K extends Instruction['kind']>(text: string, kind: K): InstructionOf<K> {
  const found = parse(text).filter((i) => i.kind === kind);
  if (found.length !== 1) throw new Error(`expected one ${kind}, got ${found.length}`);
  return found[0] as InstructionOf<K>;
}

test('a continuation joins lines, keeping the continued line\'s leading whitespace', (t) => {
  const run = only('FROM a\nRUN echo \\\n   hello \\\n world\n', 'RUN');
  t.deepEqual(run.form, { shell: 'echo    hello  world' });
  t.is(run.source.text.startLine, 2);
  t.is(run.source.text.endLine, 4);
});

test('comment lines and empty lines inside a continuation are dropped', (t) => {
  const run = only('FROM a\nRUN apt-get install \\\n# the editor\n    vim \\\n\n    curl\n', 'RUN');
  t.deepEqual(run.form, { shell: 'apt-get install     vim     curl' });
});

test('a comment after an instruction on the same line is part of the arguments, as in Docker', (t) => {
  const run = only('FROM a\nRUN echo hi # not a comment\n', 'RUN');
  t.deepEqual(run.form, { shell: 'echo hi # not a comment' });
});

test('the escape directive switches to a backtick, for continuations and escapes', (t) => {
  const parsed = readContainerfile('# escape=`\nFROM a\nRUN dir C:\\ `\n  /s\n', FILE);
  t.is(parsed.escape, '`');
  t.deepEqual(parsed.directives, { escape: '`' });
  t.is(parsed.instructions[1]!.text, 'RUN dir C:\\   /s');
});

test('a directive after an instruction or a comment is a plain comment', (t) => {
  const parsed = readContainerfile('# hello\n# escape=`\nFROM a\nRUN echo \\\n  x\n', FILE);
  t.is(parsed.escape, '\\');
  t.is(parsed.instructions[1]!.text, 'RUN echo   x');
});

test('# syntax= is accepted and kept as a directive; an invalid escape is an error', (t) => {
  t.deepEqual(readContainerfile('# syntax=docker/dockerfile:1\nFROM a\n', FILE).directives, { syntax: 'docker/dockerfile:1' });
  const err = parseError(t, '# escape=x\nFROM a\n');
  t.is(err.line, 1);
  t.regex(err.message, /^Containerfile:1: invalid escape token 'x'/);
});

test('exec form is a JSON array of strings; anything else is the shell form', (t) => {
  t.deepEqual(only('FROM a\nCMD ["echo", "hi there"]\n', 'CMD').form, { exec: ['echo', 'hi there'] });
  // single quotes are not JSON: Docker runs it through the shell
  t.deepEqual(only("FROM a\nCMD ['echo', 'hi']\n", 'CMD').form, { shell: "['echo', 'hi']" });
  const err = parseError(t, 'FROM a\nCMD ["echo", 1]\n');
  t.is(err.instruction, 'CMD');
  t.regex(err.message, /arrays must be comprised of strings only/);
});

test('a heredoc body is read after the line that opens it, up to its delimiter', (t) => {
  const run = only('FROM a\nRUN <<EOF\necho $HOME\n  indented\nEOF\nENV X=1\n', 'RUN');
  t.is(run.heredocs.length, 1);
  t.like(run.heredocs[0], { name: 'EOF', expand: true, chomp: false, content: 'echo $HOME\n  indented\n' });
  t.is(run.source.text.endLine, 5);
  t.is(parse('FROM a\nRUN <<EOF\nx\nEOF\nRUN true\n').length, 3);
});

test('a quoted delimiter means the body is not expanded', (t) => {
  for (const opener of ['<<"EOF"', "<<'EOF'", '<<E"O"F']) {
    const run = only(`FROM a\nRUN ${opener}\n$X\nEOF\n`, 'RUN');
    t.like(run.heredocs[0], { name: 'EOF', expand: false }, opener);
  }
});

test('<<- strips leading tabs from the delimiter line (the body is chomped when used)', (t) => {
  const run = only('FROM a\nRUN <<-EOF\n\techo hi\n\tEOF\n', 'RUN');
  t.like(run.heredocs[0], { name: 'EOF', chomp: true, content: '\techo hi\n' });
});

test('several heredocs on one line are read one after the other', (t) => {
  const run = only('FROM a\nRUN <<FILE1 cat > /a && 3<<FILE2 cat > /b\none\nFILE1\ntwo\nFILE2\n', 'RUN');
  t.deepEqual(
    run.heredocs.map((h) => [h.name, h.fd, h.content]),
    [
      ['FILE1', 0, 'one\n'],
      ['FILE2', 3, 'two\n'],
    ],
  );
});

test('COPY takes heredocs as sources but not as the destination', (t) => {
  const copy = only('FROM a\nCOPY <<EOF /etc/motd\nwelcome\nEOF\n', 'COPY');
  t.deepEqual(copy.inline.map((h) => h.content), ['welcome\n']);
  t.deepEqual(copy.sources, []);
  const err = parseError(t, 'FROM a\nCOPY x <<EOF\nbody\nEOF\n');
  t.regex(err.message, /cannot accept a heredoc as a destination/);
});

test('the exec form opens no heredoc', (t) => {
  // "EOF" is then a line of its own: an unknown instruction
  const err = parseError(t, 'FROM a\nRUN ["cat", "<<EOF"]\nEOF\n');
  t.like(err, { line: 3, column: 1 });
  t.regex(err.message, /unknown instruction: EOF/);
});

test('an unterminated heredoc is an error at the line that opened it', (t) => {
  const err = parseError(t, 'FROM a\n\nRUN <<EOF\necho hi\n');
  t.is(err.line, 3);
  t.regex(err.message, /unterminated heredoc/);
});

test('flags are parsed per instruction; an unknown one is an error naming it and its place', (t) => {
  const copy = only('FROM a\nCOPY --chown=1:2 --chmod=644 --link a b\n', 'COPY');
  t.like(copy, { link: true, chown: { value: '1:2' }, chmod: { value: '644' } });
  const err = parseError(t, 'FROM a\nCOPY --chown=1:2 --frm=x a b\n');
  t.like(err, { line: 2, column: 18, instruction: 'COPY', flag: '--frm' });
  t.regex(err.message, /^Containerfile:2:18: COPY --frm: unknown flag: --frm \(this instruction takes --from, /);
});

test('a flag an instruction does not take, a repeated flag and a flag without a value are errors', (t) => {
  t.like(parseError(t, 'FROM a\nENV --foo=1 A=b\n'), { instruction: 'ENV', flag: '--foo' });
  t.like(parseError(t, 'FROM a\nADD --from=x a b\n'), { instruction: 'ADD', flag: '--from' });
  t.like(parseError(t, 'FROM a\nCOPY --chown=a --chown=b a b\n'), { flag: '--chown' });
  t.regex(parseError(t, 'FROM a\nCOPY --chown a b\n').message, /missing a value on flag: --chown/);
  t.regex(parseError(t, 'FROM a\nCOPY --link=maybe a b\n').message, /expecting boolean value/);
});

test('flags BuildKit has and dockvm does not implement are refused, never ignored', (t) => {
  for (const [line, flag] of [
    ['RUN --security=insecure true', '--security'],
    ['RUN --device=nvidia.com/gpu true', '--device'],
    ['COPY --exclude=*.md . /x', '--exclude'],
    ['COPY --parents a/b /x/', '--parents'],
    ['ADD --keep-git-dir https://x/y.git /y', '--keep-git-dir'],
  ] as const) {
    const err = parseError(t, `FROM a\n${line}\n`);
    t.is(err.flag, flag, line);
    t.regex(err.message, /not supported by dockvm/, line);
  }
});

test('RUN --network takes default or none; host is refused with the reason', (t) => {
  t.is(only('FROM a\nRUN --network=none true\n', 'RUN').network?.value, 'none');
  const err = parseError(t, 'FROM a\nRUN --network=host true\n');
  t.like(err, { flag: '--network', instruction: 'RUN' });
  t.regex(err.message, /host networking is not available/);
});

test('an unknown instruction is an error naming it, at line and column', (t) => {
  const err = parseError(t, 'FROM a\n  FROBNICATE x\n');
  t.like(err, { line: 2, column: 3 });
  t.is(err.message.split(': ')[0], 'Containerfile:2:3');
  t.regex(err.message, /unknown instruction: FROBNICATE/);
});

test('ENV takes key=value pairs with quotes, or the legacy "key value" form', (t) => {
  const env = only('FROM a\nENV A=1 B="two words" C=three\\ words\n', 'ENV');
  t.deepEqual(env.pairs.map((p) => [p.key.text, p.value.text]), [['A', '1'], ['B', '"two words"'], ['C', 'three\\ words']]);
  const legacy = only('FROM a\nENV NAME some value here\n', 'ENV');
  t.deepEqual(legacy.pairs.map((p) => [p.key.text, p.value.text]), [['NAME', 'some value here']]);
  t.regex(parseError(t, 'FROM a\nENV A=1 B\n').message, /can't find = in "B"/);
  t.regex(parseError(t, 'FROM a\nENV A\n').message, /must have two arguments/);
});

test('ARG takes names with or without defaults', (t) => {
  const arg = only('FROM a\nARG A B=2 C=\n', 'ARG');
  t.deepEqual(arg.args.map((a) => [a.name, a.value?.text]), [['A', undefined], ['B', '2'], ['C', '']]);
});

test('FROM takes an image, optionally AS a lower-cased name; anything else is an error', (t) => {
  t.like(only('FROM debian:12 AS Build\n', 'FROM'), { name: 'build', image: { text: 'debian:12' } });
  t.regex(parseError(t, 'FROM a b\n').message, /FROM requires either one argument/);
  t.regex(parseError(t, 'FROM a AS 1x\n').message, /invalid name for build stage/);
});

test('HEALTHCHECK takes NONE, or CMD with a command and its flags', (t) => {
  const hc = only('FROM a\nHEALTHCHECK --interval=5s --retries=3 CMD curl -f http://x/\n', 'HEALTHCHECK');
  t.deepEqual(hc.test, { shell: 'curl -f http://x/' });
  t.is(hc.interval?.value, '5s');
  t.is(only('FROM a\nHEALTHCHECK NONE\n', 'HEALTHCHECK').test, undefined);
  t.regex(parseError(t, 'FROM a\nHEALTHCHECK NONE x\n').message, /takes no arguments/);
  t.regex(parseError(t, 'FROM a\nHEALTHCHECK WGET x\n').message, /unknown type "WGET"/);
  t.like(parseError(t, 'FROM a\nHEALTHCHECK --bogus=1 CMD x\n'), { flag: '--bogus' });
});

test('ONBUILD keeps its trigger as written and checks it is an instruction', (t) => {
  t.is(only('FROM a\nONBUILD RUN echo  hi\n', 'ONBUILD').expression, 'RUN echo  hi');
  t.is(only('FROM a\nonbuild COPY <<EOF /x\nbody\nEOF\n', 'ONBUILD').expression, 'COPY <<EOF /x\nbody\nEOF');
  t.regex(parseError(t, 'FROM a\nONBUILD ONBUILD RUN x\n').message, /Chaining ONBUILD|chaining ONBUILD/);
  t.regex(parseError(t, 'FROM a\nONBUILD FROM x\n').message, /FROM isn't allowed as an ONBUILD trigger/);
  t.like(parseError(t, 'FROM a\nONBUILD COPY --bogus=1 a b\n'), { flag: '--bogus', instruction: 'COPY' });
});

test('SHELL needs the JSON form', (t) => {
  t.deepEqual(only('FROM a\nSHELL ["/bin/bash", "-eo", "pipefail", "-c"]\n', 'SHELL').form, { exec: ['/bin/bash', '-eo', 'pipefail', '-c'] });
  t.regex(parseError(t, 'FROM a\nSHELL /bin/bash -c\n').message, /JSON form/);
});

test('a file with no instructions is an error', (t) => {
  t.regex(parseError(t, '# only a comment\n\n').message, /no instructions/);
});

test('CRLF line endings are read like LF ones', (t) => {
  const run = only('FROM a\r\nRUN echo \\\r\n  hi\r\n', 'RUN');
  t.deepEqual(run.form, { shell: 'echo   hi' });
});
