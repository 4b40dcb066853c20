// Splitting one instruction's text the way BuildKit's parser does before any expansion: the keyword,
// the leading --flags, then the arguments as words (quotes kept, for the expander to process later),
// as a whitespace-separated list, or as a JSON array of strings (the exec form).

/** A piece of the instruction's text and where it starts in it (UTF-16 offset), for error columns. */
export interface Word {
  text: string;
  offset: number;
}

export interface SplitInstruction {
  keyword: Word;
  /** the --flags before the arguments, each "--name=value" with its quotes and escapes processed */
  flags: Word[];
  /** the arguments: everything after the flags, trimmed */
  args: Word;
}

const WHITESPACE = /[\t\v\f\r ]+/;

/** "RUN --network=none echo hi" → keyword RUN, flags [--network=none], args "echo hi". */
export function splitInstruction(line: string, escape: string): SplitInstruction {
  const lead = line.length - line.trimStart().length;
  const trimmed = line.trim();
  const space = WHITESPACE.exec(trimmed);
  const keyword: Word = { text: space ? trimmed.slice(0, space.index) : trimmed, offset: lead };
  if (!space) return { keyword, flags: [], args: { text: '', offset: lead + trimmed.length } };
  const restOffset = lead + space.index + space[0].length;
  const { flags, rest, restAt } = extractFlags(trimmed.slice(space.index + space[0].length), escape);
  const args = rest.trim();
  const argsOffset = restOffset + restAt + (rest.length - rest.trimStart().length);
  return { keyword, flags: flags.map((f) => ({ text: f.text, offset: f.offset + restOffset })), args: { text: args, offset: argsOffset } };
}

/**
 * The leading "--" words of an instruction's text. A word is a flag while it starts with "--"; quotes
 * group (and are removed), the escape character escapes; a bare "--" ends the flags.
 */
export function extractFlags(line: string, escape: string): { flags: Word[]; rest: string; restAt: number } {
  const flags: Word[] = [];
  let pos = 0;
  for (;;) {
    while (pos < line.length && /\s/.test(line[pos]!)) pos++;
    if (pos >= line.length) return { flags, rest: '', restAt: pos };
    if (!line.startsWith('--', pos)) return { flags, rest: line.slice(pos), restAt: pos };
    const start = pos;
    let text = '';
    let quote = '';
    let quoted = false;
    for (; pos < line.length; pos++) {
      const ch = line[pos]!;
      if (quote) {
        if (ch === quote) {
          quote = '';
          continue;
        }
      } else {
        if (/\s/.test(ch)) break;
        if (ch === "'" || ch === '"') {
          quote = ch;
          quoted = true;
          continue;
        }
      }
      if (ch === escape) {
        if (pos + 1 === line.length) {
          quote = '';
          continue; // an escape at the very end is dropped
        }
        pos++;
        text += line[pos]!;
        continue;
      }
      text += ch;
    }
    if (text === '--') return { flags, rest: line.slice(pos), restAt: pos };
    if (text !== '' || quoted) flags.push({ text, offset: start });
  }
}

/**
 * Words separated by unquoted whitespace, with quotes and escapes kept as written (ENV, LABEL and ARG
 * are split this way before expansion; the expander removes the quotes).
 */
export function splitWords(rest: Word, escape: string): Word[] {
  const words: Word[] = [];
  const text = rest.text;
  let word = '';
  let start = -1;
  let quote = '';
  let quoted = false;
  const finish = (): void => {
    if (start >= 0 && (quoted || word !== '')) words.push({ text: word, offset: rest.offset + start });
    word = '';
    start = -1;
    quoted = false;
  };
  for (let pos = 0; pos < text.length; pos++) {
    const ch = text[pos]!;
    if (!quote && /\s/.test(ch)) {
      finish();
      continue;
    }
    if (start < 0) start = pos;
    if (quote) {
      if (ch === quote) quote = '';
      else if (ch === escape && quote !== "'") {
        if (pos + 1 === text.length) {
          quote = '';
          continue;
        }
        word += ch;
        pos++;
        word += text[pos]!;
        continue;
      }
      word += ch;
      continue;
    }
    if (ch === "'" || ch === '"') {
      quote = ch;
      quoted = true;
    } else if (ch === escape) {
      if (pos + 1 === text.length) continue;
      word += ch;
      pos++;
      word += text[pos]!;
      continue;
    }
    word += ch;
  }
  finish();
  return words;
}

/** Whitespace-separated words, nothing else (FROM, EXPOSE, and COPY/ADD/VOLUME when not JSON). */
export function splitOnWhitespace(rest: Word): Word[] {
  const words: Word[] = [];
  const re = /[^\t\v\f\r ]+/g;
  for (let m = re.exec(rest.text); m; m = re.exec(rest.text)) words.push({ text: m[0], offset: rest.offset + m.index });
  return words;
}

export type JsonForm = { kind: 'json'; values: string[] } | { kind: 'not-json' } | { kind: 'not-strings' };

/**
 * The exec form: a JSON array of strings. Text that is not a JSON array is the shell form (Docker's
 * rule: `CMD ['a']` with single quotes is a shell command); a JSON array of anything else is an error.
 */
export function parseJsonForm(rest: string): JsonForm {
  const text = rest.trimStart();
  if (!text.startsWith('[')) return { kind: 'not-json' };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { kind: 'not-json' };
  }
  if (!Array.isArray(value)) return { kind: 'not-json' };
  if (!value.every((item) => typeof item === 'string')) return { kind: 'not-strings' };
  return { kind: 'json', values: value as string[] };
}
