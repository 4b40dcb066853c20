// From a Containerfile's text to its instructions' text, as BuildKit's parser reads it: parser
// directives at the top (`# escape=`, `# syntax=`, `# check=`), comments, blank lines, the escape
// character at a line's end continuing it (comment and blank lines inside a continuation are dropped;
// the continued line keeps its leading whitespace), and heredoc bodies after the line that opens them.
//
// Why not the npm package dockerfile-ast (rcjsuen, VS Code's Docker tooling): it is an editor's AST,
// tolerant by design. It never reports a syntax error (an unterminated heredoc or JSON array parses
// "fine"), keeps comment lines inside continuations in the argument text, and gives heredocs only as
// ranges, without their content or whether the delimiter was quoted. A build needs the opposite.
import { ContainerfileError } from './errors.js';
import { expandWords, ShellSyntaxError } from './shell-lexer.js';
import { parseJsonForm, splitInstruction } from './words.js';

export interface Heredoc {
  /** the delimiter word, quotes removed */
  name: string;
  /** false when the delimiter was quoted ("EOF" or 'EOF'): the body is not expanded */
  expand: boolean;
  /** <<-: leading tabs are stripped from the body lines and the delimiter line */
  chomp: boolean;
  /** the file descriptor number before <<, 0 when none */
  fd: number;
  /** the body, each line with its line ending */
  content: string;
}

/** One instruction's text: its lines joined, with a map back to where each part was written. */
export interface InstructionText {
  text: string;
  /** 1-based line of the first and last physical line (heredoc bodies included) */
  startLine: number;
  endLine: number;
  heredocs: Heredoc[];
  /** where the character at `offset` of `text` was written */
  position(offset: number): { line: number; column: number };
}

export interface ContainerfileText {
  escape: '\\' | '`';
  /** parser directives found at the top, lower-case names */
  directives: Record<string, string>;
  instructions: InstructionText[];
}

const DIRECTIVE = /^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$/;
const KNOWN_DIRECTIVES = new Set(['syntax', 'escape', 'check']);
const HEREDOC_WORD = /^(\d*)<<(-?)\s*([^<]*)$/;
/** instructions whose arguments may open heredocs (and ONBUILD, for its trigger) */
const HEREDOC_INSTRUCTIONS = new Set(['run', 'copy', 'add']);

interface Segment {
  offset: number;
  line: number;
  column: number;
}

export function readContainerfile(source: string, file: string): ContainerfileText {
  const lines = splitLines(source.startsWith('\uFEFF') ? source.slice(1) : source);
  const directives: Record<string, string> = {};
  let escape: '\\' | '`' = '\\';
  let directivesDone = false;
  const instructions: InstructionText[] = [];

  /** A directive is a comment at the top, before any instruction or other comment. */
  const directive = (text: string, lineNo: number): boolean => {
    if (directivesDone) return false;
    if (!text.startsWith('#')) {
      directivesDone = true;
      return false;
    }
    const match = DIRECTIVE.exec(text.slice(1).trimStart());
    const name = match?.[1]?.toLowerCase();
    if (!match || !name || !KNOWN_DIRECTIVES.has(name)) {
      directivesDone = true;
      return false;
    }
    if (name in directives) throw new ContainerfileError(`only one ${name} parser directive can be used`, { file, line: lineNo });
    directives[name] = match[2]!;
    if (name === 'escape') {
      if (match[2] !== '\\' && match[2] !== '`') {
        throw new ContainerfileError(`invalid escape token '${match[2]}' does not match \` or \\`, { file, line: lineNo });
      }
      escape = match[2];
    }
    return true;
  };

  let index = 0;
  while (index < lines.length) {
    const lineNo = index + 1;
    const raw = trimNewline(lines[index]!);
    index++;
    const lead = raw.length - raw.trimStart().length;
    const first = raw.trimStart();
    directive(first, lineNo);
    if (isComment(first)) continue;
    const continuation = continuationPattern(escape);
    let [text, ended] = trimContinuation(first, continuation);
    if (ended && text === '') continue;

    const segments: Segment[] = [{ offset: 0, line: lineNo, column: lead + 1 }];
    let endLine = lineNo;
    while (!ended && index < lines.length) {
      const next = trimNewline(lines[index]!);
      index++;
      endLine = index;
      directive(next, endLine);
      if (isComment(next)) continue;
      if (next.trim() === '') continue; // an empty continuation line (BuildKit warns; it will become an error)
      const [part, partEnded] = trimContinuation(next, continuation);
      segments.push({ offset: text.length, line: endLine, column: 1 });
      text += part;
      ended = partEnded;
    }

    const position = (offset: number): { line: number; column: number } => {
      let segment = segments[0]!;
      for (const s of segments) if (s.offset <= offset) segment = s;
      return { line: segment.line, column: segment.column + offset - segment.offset };
    };

    const heredocs: Heredoc[] = [];
    if (mayOpenHeredocs(text, escape) && text.includes('<<')) {
      for (const opened of heredocsOpenedBy(text, file, position)) {
        const body: string[] = [];
        let terminated = false;
        while (index < lines.length) {
          const bodyLine = lines[index]!;
          index++;
          endLine = index;
          let candidate = trimNewline(bodyLine);
          if (opened.chomp) candidate = candidate.replace(/^\t+/, '');
          if (candidate === opened.name) {
            terminated = true;
            break;
          }
          body.push(bodyLine);
        }
        if (!terminated) {
          throw new ContainerfileError(`unterminated heredoc: no line "${opened.name}" ends the heredoc opened here`, { file, line: lineNo });
        }
        heredocs.push({ ...opened, content: body.join('') });
      }
    }
    instructions.push({ text, startLine: lineNo, endLine, heredocs, position });
  }
  if (instructions.length === 0) {
    throw new ContainerfileError('the file has no instructions (a Containerfile starts with FROM)', { file, line: Math.max(lines.length, 1) });
  }
  return { escape, directives, instructions };
}

/** Lines with their endings kept (heredoc bodies keep them, \r\n included). */
function splitLines(source: string): string[] {
  const lines = source.split(/(?<=\n)/);
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  return lines;
}

function trimNewline(line: string): string {
  return line.replace(/[\r\n]+$/, '');
}

function isComment(line: string): boolean {
  return line.trimStart().startsWith('#');
}

/** The escape as the last non-blank character continues the line, unless it is itself escaped (one level, as BuildKit). */
function continuationPattern(escape: string): RegExp {
  const e = escape === '`' ? '`' : '\\\\';
  return new RegExp(`([^${e}])${e}[ \\t]*$|^${e}[ \\t]*$`);
}

function trimContinuation(line: string, pattern: RegExp): [string, boolean] {
  if (!pattern.test(line)) return [line, true];
  return [line.replace(pattern, '$1'), false];
}

/** RUN, COPY, ADD (and ONBUILD of one of them) in shell form may open heredocs; the exec form may not. */
function mayOpenHeredocs(text: string, escape: string): boolean {
  let split = splitInstruction(text, escape);
  if (split.keyword.text.toLowerCase() === 'onbuild') split = splitInstruction(split.args.text, escape);
  if (!HEREDOC_INSTRUCTIONS.has(split.keyword.text.toLowerCase())) return false;
  return parseJsonForm(split.args.text).kind !== 'json';
}

/** The heredocs a line opens, in order: each word of the form [n]<<[-]WORD. */
function heredocsOpenedBy(
  text: string,
  file: string,
  position: (offset: number) => { line: number; column: number },
): Omit<Heredoc, 'content'>[] {
  try {
    // BuildKit splits the line with quotes and escapes kept, unset variables left as written
    const words = expandWords(text, () => undefined, { rawQuotes: true, rawEscapes: true, skipUnsetEnv: true });
    return words.map(parseHeredocWord).filter((h) => h !== undefined);
  } catch (err) {
    if (!(err instanceof ShellSyntaxError)) throw err;
    throw new ContainerfileError(err.message, { file, ...position(err.index) });
  }
}

/**
 * "<<EOF", "<<-EOF", "<<'EOF'", "3<<\"EOF\"" → the heredoc it opens, or undefined when the word opens none.
 * A delimiter with any quoted part means "do not expand the body", as in sh.
 */
export function parseHeredocWord(word: string): Omit<Heredoc, 'content'> | undefined {
  const match = HEREDOC_WORD.exec(word);
  if (!match || match[3] === '') return undefined;
  const rest = match[3]!;
  const plain = expandWords(rest, () => undefined, { skipUnsetEnv: true });
  if (plain.length !== 1) return undefined;
  const raw = expandWords(rest, () => undefined, { skipUnsetEnv: true, rawQuotes: true });
  const quotes = (s: string): number => (s.match(/['"]/g) ?? []).length;
  return {
    name: plain[0]!,
    expand: quotes(plain[0]!) === quotes(raw[0] ?? ''),
    chomp: match[2] === '-',
    fd: match[1] ? Number(match[1]) : 0,
  };
}
