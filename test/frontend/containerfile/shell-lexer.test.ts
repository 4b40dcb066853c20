// Expansion and word splitting, checked against cases from BuildKit's own lexer tests
// (frontend/dockerfile/shell/envVarTest and wordsTest): the same inputs must give the same words.
import test from 'ava';
import { expandWord, expandWords, ShellSyntaxError } from '../../../src/frontend/containerfile/shell-lexer.js';

const ENV: Record<string, string> = { PWD: '/home', SHELL: 'bash', KOREAN: '한국어', NULL: '' };
const lookup = (name: string): string | undefined => ENV[name];

// input → expected result; null = a syntax error
const WORD_CASES: [string, string | null][] = [
  ['hello', 'hello'],
  ["he'll'o", 'hello'],
  ["he'llo", null],
  ["he\\'llo", "he'llo"],
  ["he\\\\'llo", null],
  ['abc\\tdef', 'abctdef'],
  ['"abc\\tdef"', 'abc\\tdef'],
  ['"abc\\\\tdef"', 'abc\\tdef'],
  ["'abc\\tdef'", 'abc\\tdef'],
  ['hello\\', 'hello'],
  ['hello\\\\', 'hello\\'],
  ['"hello', null],
  ['"hello\\"', null],
  ['"hel\'lo"', "hel'lo"],
  ["'hello", null],
  ["'hello\\'", 'hello\\'],
  ['"\'\'"', "''"],
  ['$.', '$.'],
  ['he$1x', 'hex'],
  ['he$.x', 'he$.x'],
  ['he$pwd.', 'he.'],
  ['he$PWD', 'he/home'],
  ['he\\$PWD', 'he$PWD'],
  ['he\\\\$PWD', 'he\\/home'],
  ['"he\\$PWD"', 'he$PWD'],
  ['"he\\\\$PWD"', 'he\\/home'],
  ['\\${}', '${}'],
  ['he\\${}xx', 'he${}xx'],
  ['${}', null],
  ['he${}xx', null],
  ['he${hi}xx', 'hexx'],
  ['he${PWD}', 'he/home'],
  ['he${.}', null],
  ['he${XXX:-000}xx', 'he000xx'],
  ['he${PWD:-000}xx', 'he/homexx'],
  ['he${XXX:-$PWD}xx', 'he/homexx'],
  ['he${XXX:-${PWD:-yyy}}xx', 'he/homexx'],
  ['he${XXX:-${YYY:-yyy}}xx', 'heyyyxx'],
  ['he${XXX:YYY}', null],
  ['he${XXX?}', null],
  ['he${XXX:?}', null],
  ['he${PWD?}', 'he/home'],
  ['he${PWD:?}', 'he/home'],
  ['he${NULL?}', 'he'],
  ['he${NULL:?}', null],
  ['he${XXX:+${PWD}}xx', 'hexx'],
  ['he${PWD:+${XXX}}xx', 'hexx'],
  ['he${PWD:+${SHELL}}xx', 'hebashxx'],
  ['he${XXX:+000}xx', 'hexx'],
  ['he${PWD:+000}xx', 'he000xx'],
  ["'he${XX}'", 'he${XX}'],
  ['"he${PWD}"', 'he/home'],
  ['"he\'$PWD\'"', "he'/home'"],
  ['"$PWD"', '/home'],
  ["'$PWD'", '$PWD'],
  ["'\\$PWD'", '\\$PWD'],
  ['he${PWD', null],
  ['he${PWD:=000}xx', null],
  ['he${PWD:+${PWD}:}xx', 'he/home:xx'],
  ['he${XXX:-\\$PWD:}xx', 'he$PWD:xx'],
  ['he${XXX:-\\${PWD}z}xx', 'he${PWDz}xx'],
  ["안'녕'하세요", '안녕하세요'],
  ['안녕$KOREAN', '안녕한국어'],
  ['${{aaa}', null],
  ['${aaa}}', '}'],
  ['${aaa:-bbb}}', 'bbb}'],
  ['${aaa:-bbb', null],
  ['${aaa:-bbb ${foo}', null],
  ['${aaa:-bbb {foo}', 'bbb {foo'],
  ['${:}', null],
  ['${:-bbb}', null],
  ['$1', ''],
  ['${1:-bbb}', 'bbb'],
  ['$999aaa', 'aaa'],
  ['${001:-bbb}aaa', 'bbbaaa'],
  ['$@@@', '@@'],
  ['${@:-bbb}aaa', 'bbbaaa'],
  ['$$', ''],
  ['${!:-bbb}', 'bbb'],
  // the pattern modifiers (BuildKit's lex_test)
  ['${PWD#/}', 'home'],
  ['${PWD%me}', '/ho'],
  ['${SHELL/a/A}', 'bAsh'],
];

for (const [input, expected] of WORD_CASES) {
  test(`expandWord ${JSON.stringify(input)} → ${expected === null ? 'error' : JSON.stringify(expected)}`, (t) => {
    if (expected === null) t.throws(() => expandWord(input, lookup), { instanceOf: ShellSyntaxError });
    else t.is(expandWord(input, lookup).result, expected);
  });
}

test('the pattern modifiers pick the shortest and the longest match', (t) => {
  const env = (name: string) => ({ F: 'a.b.c.tar.gz', V: 'aXbXc' })[name];
  t.is(expandWord('${F%.*}', env).result, 'a.b.c.tar');
  t.is(expandWord('${F%%.*}', env).result, 'a');
  t.is(expandWord('${F#*.}', env).result, 'b.c.tar.gz');
  t.is(expandWord('${F##*.}', env).result, 'gz');
  t.is(expandWord('${V//X/-}', env).result, 'a-b-c');
  t.is(expandWord('${V/X/-}', env).result, 'a-bXc');
});

// BuildKit's wordsTest: splitting happens after expansion, on unquoted whitespace
const WORDS_CASES: [string, Record<string, string>, string[] | null][] = [
  ['hello', {}, ['hello']],
  ['hello${hi}bye', {}, ['hellobye']],
  ['hello${hi}bye', { hi: 'hi' }, ['hellohibye']],
  ['hello${space}bye', { space: 'abc  def' }, ['helloabc', 'defbye']],
  ['hello"${space}"bye', { space: 'abc  def' }, ['helloabc  defbye']],
  ['hello "${space}"bye', { space: 'abc  def' }, ['hello', 'abc  defbye']],
  ['hello${leading}def', { leading: '  ab c' }, ['hello', 'ab', 'cdef']],
  ['hello"${leading}" def', { leading: '  ab c' }, ['hello  ab c', 'def']],
  ['hello${trailing}d', { trailing: 'ab c   ' }, ['helloab', 'c', 'd']],
  ['hello" there  "', {}, ['hello there  ']],
  ['hello there     ', {}, ['hello', 'there']],
  ['hello\\ there', {}, ['hello there']],
  ['hello" there', {}, null],
  ['hello\\" there', {}, ['hello"', 'there']],
  ['hello"\\\\there"', {}, ['hello\\there']],
  ['hello"\\there"', {}, ['hello\\there']],
  ["hello'\\\\there'", {}, ['hello\\\\there']],
  ["hello'$there'", {}, ['hello$there']],
];

for (const [input, env, expected] of WORDS_CASES) {
  test(`expandWords ${JSON.stringify(input)} with ${JSON.stringify(env)}`, (t) => {
    const get = (name: string) => env[name];
    if (expected === null) t.throws(() => expandWords(input, get), { instanceOf: ShellSyntaxError });
    else t.deepEqual(expandWords(input, get), expected);
  });
}

test('the backtick escape directive makes ` the escape and \\ an ordinary character', (t) => {
  t.is(expandWord('C:\\path\\$X', lookup, { escape: '`' }).result, 'C:\\path\\');
  t.is(expandWord('a`$PWD', lookup, { escape: '`' }).result, 'a$PWD');
});

test('a syntax error says where in the word it starts', (t) => {
  const err = t.throws(() => expandWord('abc "def', lookup), { instanceOf: ShellSyntaxError });
  t.is(err.index, 4);
  t.regex(err.message, /double-quote/);
});

test('unset variables used bare are reported; a default makes them fine', (t) => {
  t.deepEqual([...expandWord('$A ${B} ${C:-x} $PWD', lookup).unsetBare], ['A', 'B']);
  t.deepEqual([...expandWord('${C:-x}', lookup).unsetBare], []);
});

test('skipUnsetEnv leaves unset variables as written (how heredoc lines are scanned)', (t) => {
  t.is(expandWord('$X ${Y} ${Z:-d} $PWD', lookup, { skipUnsetEnv: true }).result, '$X ${Y} ${Z:-d} /home');
});
