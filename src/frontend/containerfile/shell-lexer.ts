// Variable expansion and word splitting the way BuildKit's shell lexer (frontend/dockerfile/shell)
// does them for Dockerfile instructions: $VAR, ${VAR}, ${VAR:-w} ${VAR-w} ${VAR:+w} ${VAR+w}
// ${VAR:?msg} ${VAR?msg}, ${VAR#p} ${VAR##p} ${VAR%p} ${VAR%%p}, ${VAR/p/r} ${VAR//p/r}; single quotes
// keep everything literal, double quotes keep everything but $ and escapes, the escape character (\ or
// the directive's `) escapes the next character. It is not a shell: no command substitution, no globbing.
// Positional and special parameters ($1, $@, $?…) are never set, as in a Dockerfile.

/** A variable's value, or undefined when it is not set. */
export type EnvLookup = (name: string) => string | undefined;

export interface LexerOptions {
  /** '\\' or '`' (the escape parser directive) */
  escape?: string;
  /** keep the quote characters in the result */
  rawQuotes?: boolean;
  /** keep the escape characters in the result */
  rawEscapes?: boolean;
  /** leave $VAR as written when VAR is not set */
  skipUnsetEnv?: boolean;
  /** treat quotes as ordinary characters (heredoc bodies) */
  skipProcessQuotes?: boolean;
}

export interface ExpandResult {
  result: string;
  /** names that were looked up and not set */
  unmatched: Set<string>;
  /** names that were not set and used bare ($X, ${X}): their expansion silently became "" */
  unsetBare: Set<string>;
}

/** A syntax error in a word; `index` is the offset (in UTF-16 code units) in the word where it was found. */
export class ShellSyntaxError extends Error {
  constructor(
    message: string,
    readonly index: number,
  ) {
    super(message);
  }
}

const END = '';

/** Expand variables in one word; spaces are kept (ENV values, COPY paths, WORKDIR…). */
export function expandWord(word: string, env: EnvLookup, options: LexerOptions = {}): ExpandResult {
  const scan = new Scanner(word, env, options);
  const { text } = scan.processUntil(END, scan.rawEscapes);
  return { result: text, unmatched: scan.unmatched, unsetBare: scan.unsetBare };
}

/** Expand variables and split into words on unquoted whitespace (after expansion, as BuildKit does). */
export function expandWords(word: string, env: EnvLookup, options: LexerOptions = {}): string[] {
  const scan = new Scanner(word, env, options);
  return scan.processUntil(END, scan.rawEscapes).words;
}

/** Collects the words of a processed string: unquoted whitespace separates them. */
class Words {
  private readonly words: string[] = [];
  private buffer = '';
  private inWord = false;

  /** a character that whitespace may split on */
  addChar(ch: string): void {
    if (isSpace(ch)) {
      if (this.inWord && this.buffer !== '') {
        this.words.push(this.buffer);
        this.buffer = '';
        this.inWord = false;
      }
    } else {
      this.addRaw(ch);
    }
  }

  addString(text: string): void {
    for (const ch of text) this.addChar(ch);
  }

  /** quoted or escaped text: part of the current word whatever it holds */
  addRaw(text: string): void {
    this.buffer += text;
    this.inWord = true;
  }

  result(): string[] {
    if (this.buffer !== '') {
      this.words.push(this.buffer);
      this.buffer = '';
      this.inWord = false;
    }
    return this.words;
  }
}

class Scanner {
  private pos = 0;
  readonly escape: string;
  readonly rawEscapes: boolean;
  readonly unmatched = new Set<string>();
  readonly unsetBare = new Set<string>();

  constructor(
    private readonly source: string,
    private readonly env: EnvLookup,
    private readonly options: LexerOptions,
  ) {
    this.escape = options.escape ?? '\\';
    this.rawEscapes = options.rawEscapes ?? false;
  }

  private peek(): string {
    if (this.pos >= this.source.length) return END;
    return String.fromCodePoint(this.source.codePointAt(this.pos)!);
  }

  private next(): string {
    const ch = this.peek();
    this.pos += ch.length;
    return ch;
  }

  private fail(message: string, at = this.pos): never {
    throw new ShellSyntaxError(message, at);
  }

  /** Process up to `stop` (consumed) or the end; `rawEscapes` keeps escape characters (pattern words). */
  processUntil(stop: string, rawEscapes: boolean): { text: string; words: string[] } {
    const start = this.pos;
    let text = '';
    const words = new Words();
    while (this.peek() !== END) {
      const ch = this.peek();
      if (stop !== END && ch === stop) {
        this.next();
        return { text, words: words.result() };
      }
      if (ch === '$') {
        const value = this.dollar();
        text += value;
        words.addString(value);
      } else if (ch === '<') {
        const value = this.possibleHeredoc();
        text += value;
        words.addRaw(value);
      } else if ((ch === "'" || ch === '"') && !this.options.skipProcessQuotes) {
        const value = ch === "'" ? this.singleQuoted() : this.doubleQuoted(rawEscapes);
        text += value;
        words.addRaw(value);
      } else {
        this.next();
        if (ch === this.escape) {
          if (rawEscapes) {
            words.addRaw(ch);
            text += ch;
          }
          const escaped = this.next();
          if (escaped === END) break; // an escape at the very end is dropped
          words.addRaw(escaped);
          text += escaped;
        } else {
          words.addChar(ch);
          text += ch;
        }
      }
    }
    if (stop !== END) this.fail(`unexpected end of statement while looking for matching ${stop}`, start);
    return { text, words: words.result() };
  }

  private singleQuoted(): string {
    const start = this.pos;
    const raw = this.options.rawQuotes ?? false;
    let result = raw ? this.next() : (this.next(), '');
    for (;;) {
      const ch = this.next();
      if (ch === END) this.fail('unexpected end of statement while looking for matching single-quote', start);
      if (ch === "'") return raw ? result + ch : result;
      result += ch;
    }
  }

  private doubleQuoted(rawEscapes: boolean): string {
    const start = this.pos;
    const raw = this.options.rawQuotes ?? false;
    let result = raw ? this.next() : (this.next(), '');
    for (;;) {
      const ch = this.peek();
      if (ch === END) this.fail('unexpected end of statement while looking for matching double-quote', start);
      if (ch === '"') {
        this.next();
        return raw ? result + ch : result;
      }
      if (ch === '$') {
        result += this.dollar();
        continue;
      }
      this.next();
      if (ch === this.escape) {
        if (rawEscapes) result += ch;
        const following = this.peek();
        if (following === END) continue; // reported as the missing quote on the next turn
        // Inside double quotes only ", $ and the escape itself are escaped; others keep the escape.
        if (following === '"' || following === '$' || following === this.escape) {
          result += this.next();
        } else {
          result += ch;
        }
        continue;
      }
      result += ch;
    }
  }

  private lookup(name: string): string | undefined {
    const value = this.env(name);
    if (value === undefined) this.unmatched.add(name);
    return value;
  }

  private dollar(): string {
    const start = this.pos;
    this.next(); // $
    if (this.peek() !== '{') {
      const name = this.name();
      if (name === '') return '$';
      const value = this.lookup(name);
      if (value === undefined) {
        if (this.options.skipUnsetEnv) return `$${name}`;
        if (!isPositionalOrSpecial(name)) this.unsetBare.add(name);
        return '';
      }
      return value;
    }
    this.next(); // {
    const first = this.peek();
    if (first === END) this.fail("syntax error: missing '}'", start);
    if (first === '{' || first === '}' || first === ':') this.fail('syntax error: bad substitution', start);
    const name = this.name();
    const op = this.next();
    switch (op) {
      case END:
        this.fail("syntax error: missing '}'", start);
      case '}': {
        const value = this.lookup(name);
        if (value === undefined) {
          if (this.options.skipUnsetEnv) return `\${${name}}`;
          if (!isPositionalOrSpecial(name)) this.unsetBare.add(name);
          return '';
        }
        return value;
      }
      case ':':
      case '+':
      case '-':
      case '?':
      case '#':
      case '%':
        return this.modifier(name, op, start);
      case '/':
        return this.replacement(name, start);
      default:
        this.fail(`unsupported modifier (${op}) in substitution`, start);
    }
  }

  /** ${NAME<op>word}: op is one of :- - :+ + :? ? # ## % %% */
  private modifier(name: string, first: string, start: number): string {
    let op = first;
    let nullIsUnset = false;
    if (first === ':') {
      nullIsUnset = true;
      op = this.next();
    }
    const chars = nullIsUnset ? `:${op}` : op;
    const isPattern = op === '#' || op === '%';
    if (!['+', '-', '?', '#', '%'].includes(op) || (nullIsUnset && isPattern)) {
      this.fail(`unsupported modifier (${chars}) in substitution`, start);
    }
    let word: string;
    try {
      word = this.processUntil('}', isPattern).text;
    } catch (err) {
      if (err instanceof ShellSyntaxError && this.peek() === END) this.fail("syntax error: missing '}'", start);
      throw err;
    }
    const value = this.lookup(name);
    if (value === undefined && this.options.skipUnsetEnv) return `\${${name}${chars}${word}}`;
    const unset = value === undefined || (nullIsUnset && value === '');
    switch (op) {
      case '-':
        return unset ? word : value!;
      case '+':
        return unset ? '' : word;
      case '?':
        if (value === undefined) this.fail(`${name}: ${word || 'is not allowed to be unset'}`, start);
        if (nullIsUnset && value === '') this.fail(`${name}: ${word || 'is not allowed to be empty'}`, start);
        return value;
      default: {
        const greedy = word.startsWith(op);
        const pattern = greedy ? word.slice(1) : word;
        return op === '#' ? trimPrefix(pattern, value ?? '', greedy, start) : trimSuffix(pattern, value ?? '', greedy, start);
      }
    }
  }

  /** ${NAME/pattern/replacement}, ${NAME//pattern/replacement} (all) */
  private replacement(name: string, start: number): string {
    const all = this.peek() === '/';
    if (all) this.next();
    let pattern: string;
    let replacement: string;
    try {
      pattern = this.processUntil('/', true).text;
    } catch (err) {
      if (err instanceof ShellSyntaxError && this.peek() === END) this.fail("syntax error: missing '/' in ${}", start);
      throw err;
    }
    try {
      replacement = this.processUntil('}', true).text;
    } catch (err) {
      if (err instanceof ShellSyntaxError && this.peek() === END) this.fail("syntax error: missing '}'", start);
      throw err;
    }
    const value = this.lookup(name);
    if (value === undefined && this.options.skipUnsetEnv) return `\${${name}/${pattern}/${replacement}}`;
    const regex = shellPatternToRegex(pattern, true, false, start, all ? 'g' : '');
    return (value ?? '').replace(regex, () => replacement);
  }

  /** A variable name: letters, digits, _; or a run of digits (positional); or one special character. */
  private name(): string {
    let name = '';
    for (;;) {
      const ch = this.peek();
      if (ch === END) return name;
      if (name === '' && /^\p{Nd}$/u.test(ch)) {
        while (/^\p{Nd}$/u.test(this.peek())) name += this.next();
        return name;
      }
      if (name === '' && '@*#?-$!0'.includes(ch)) return this.next();
      if (!/^[\p{L}\p{Nd}_]$/u.test(ch)) return name;
      name += this.next();
    }
  }

  /** "<<" and the spaces after it stay together, so a heredoc word "<< EOF" is one word. */
  private possibleHeredoc(): string {
    this.next();
    if (this.peek() !== '<') return '<';
    this.next();
    let spaces = '';
    while (this.peek() === ' ' || this.peek() === '\t' || this.peek() === '\r') spaces += this.next();
    return `<<${spaces}`;
  }
}

function isSpace(ch: string): boolean {
  return /^\s$/u.test(ch);
}

function isPositionalOrSpecial(name: string): boolean {
  return /^[0-9]+$/.test(name) || (name.length === 1 && '@*#?-$!'.includes(name));
}

/**
 * A shell pattern (* any string, ? one character, \ escapes; no [] classes, as BuildKit) as a RegExp.
 * `greedy` picks the longest match for *; `anchored` matches only at the start.
 */
function shellPatternToRegex(pattern: string, greedy: boolean, anchored: boolean, at: number, flags = ''): RegExp {
  let out = anchored ? '^' : '';
  const chars = [...pattern];
  for (let i = 0; i < chars.length; i++) {
    const ch = chars[i]!;
    // Go's regexp "." does not match a newline either
    if (ch === '*') out += greedy ? '.*' : '.*?';
    else if (ch === '?') out += '.';
    else if (ch === '\\') {
      const following = chars[i + 1];
      if (following === '}' || following === '/') continue; // escaped only for the ${} syntax
      if (following !== '*' && following !== '?' && following !== '\\') {
        throw new ShellSyntaxError(`invalid pattern (${pattern}) in substitution: invalid escape '\\${following ?? ''}'`, at);
      }
      out += `\\${following}`;
      i++;
    } else out += ch.replace(/[[\]{}.+()|^$]/g, '\\$&');
  }
  return new RegExp(out, `u${flags}`);
}

function trimPrefix(pattern: string, value: string, greedy: boolean, at: number): string {
  const match = shellPatternToRegex(pattern, greedy, true, at).exec(value);
  return match ? value.slice(match[0].length) : value;
}

/** The shortest (or longest) suffix: reverse both and trim a prefix, keeping escapes in order. */
function trimSuffix(pattern: string, value: string, greedy: boolean, at: number): string {
  const reversedValue = [...value].reverse().join('');
  return [...trimPrefix(reversePattern(pattern), reversedValue, greedy, at)].reverse().join('');
}

function reversePattern(pattern: string): string {
  const chars = [...pattern];
  const tokens: string[] = [];
  for (let i = 0; i < chars.length; i++) {
    if (chars[i] === '\\' && i + 1 < chars.length) {
      tokens.push(`\\${chars[i + 1]}`);
      i++;
    } else tokens.push(chars[i]!);
  }
  return tokens.reverse().join('');
}
