// Each instruction's text turned into a typed instruction, before any variable is expanded: the
// arguments as words (with their offsets, for error columns), the flags each instruction allows, the
// exec or shell form, the heredocs it opened. The rules are BuildKit's (frontend/dockerfile/instructions).
import { ContainerfileError } from './errors.js';
import { FlagError, parseFlags, type FlagSpec, type FlagValue, type ParsedFlags } from './flags.js';
import { parseHeredocWord, type Heredoc, type InstructionText } from './lines.js';
import { parseJsonForm, splitInstruction, splitOnWhitespace, splitWords, type Word } from './words.js';

/** Where an instruction is, and how to blame it. */
export interface Source {
  file: string;
  text: InstructionText;
  /** upper-case keyword */
  keyword: string;
  /** the instruction as written (continuations joined), for ONBUILD and messages */
  original: string;
}

/** The exec form (JSON array) or the shell form (one string, handed to SHELL). */
export type CommandForm = { exec: string[] } | { shell: string };

export type Instruction =
  | FromInstruction
  | RunInstruction
  | CopyInstruction
  | KeyValueInstruction
  | ArgInstruction
  | SingleValueInstruction
  | ListInstruction
  | CommandInstruction
  | HealthcheckInstruction
  | OnbuildInstruction;

interface Base {
  source: Source;
}

export interface FromInstruction extends Base {
  kind: 'FROM';
  image: Word;
  /** `AS name`, lower-cased */
  name?: string;
  platform?: FlagValue;
}

export interface RunInstruction extends Base {
  kind: 'RUN';
  form: CommandForm;
  heredocs: Heredoc[];
  mounts: FlagValue[];
  network?: FlagValue;
}

export interface CopyInstruction extends Base {
  kind: 'COPY' | 'ADD';
  sources: Word[];
  /** heredoc sources (<<EOF), in order */
  inline: Heredoc[];
  dest: Word;
  from?: FlagValue;
  chown?: FlagValue;
  chmod?: FlagValue;
  checksum?: FlagValue;
  link: boolean;
  /** ADD --unpack given explicitly */
  unpack?: boolean;
}

export interface KeyValueInstruction extends Base {
  kind: 'ENV' | 'LABEL';
  pairs: { key: Word; value: Word }[];
}

export interface ArgInstruction extends Base {
  kind: 'ARG';
  args: { name: string; value?: Word }[];
}

export interface SingleValueInstruction extends Base {
  kind: 'WORKDIR' | 'USER' | 'STOPSIGNAL' | 'MAINTAINER';
  value: Word;
}

export interface ListInstruction extends Base {
  kind: 'EXPOSE' | 'VOLUME';
  values: Word[];
}

export interface CommandInstruction extends Base {
  kind: 'CMD' | 'ENTRYPOINT' | 'SHELL';
  form: CommandForm;
}

export interface HealthcheckInstruction extends Base {
  kind: 'HEALTHCHECK';
  /** undefined for HEALTHCHECK NONE */
  test?: CommandForm;
  interval?: FlagValue;
  timeout?: FlagValue;
  startPeriod?: FlagValue;
  startInterval?: FlagValue;
  retries?: FlagValue;
}

export interface OnbuildInstruction extends Base {
  kind: 'ONBUILD';
  /** the trigger as it is stored in the image config's OnBuild */
  expression: string;
}

const NO_FLAGS: FlagSpec = {};
const UNSUPPORTED_EXCLUDE = { unsupported: 'filter the sources with .dockerignore or a narrower pattern instead' };

const FLAGS: Readonly<Record<string, FlagSpec>> = {
  FROM: { platform: 'string' },
  RUN: {
    mount: 'strings',
    network: 'string',
    security: { unsupported: 'every RUN already runs as root in its own VM; --security=insecure has no meaning here' },
    device: { unsupported: 'CDI devices are not available in the build VM' },
  },
  COPY: {
    from: 'string',
    chown: 'string',
    chmod: 'string',
    link: 'bool',
    exclude: UNSUPPORTED_EXCLUDE,
    parents: { unsupported: 'copy each parent directory explicitly' },
  },
  ADD: {
    chown: 'string',
    chmod: 'string',
    link: 'bool',
    checksum: 'string',
    unpack: 'bool',
    exclude: UNSUPPORTED_EXCLUDE,
    'keep-git-dir': { unsupported: 'ADD of a git repository is not supported; clone it in a RUN step' },
  },
  HEALTHCHECK: { interval: 'string', timeout: 'string', 'start-period': 'string', 'start-interval': 'string', retries: 'string' },
};

const STAGE_NAME = /^[a-z][a-z0-9-_.]*$/;

export function parseInstruction(text: InstructionText, file: string, escape: string): Instruction {
  const split = splitInstruction(text.text, escape);
  const keyword = split.keyword.text.toUpperCase();
  const source: Source = { file, text, keyword, original: text.text.trim() };
  const fail = (reason: string, offset?: number, flag?: string): never => {
    const at = offset === undefined ? { line: text.startLine } : text.position(offset);
    throw new ContainerfileError(reason, { file, ...at, instruction: keyword, ...(flag ? { flag } : {}) });
  };
  const spec = FLAGS[keyword] ?? NO_FLAGS;
  let flags: ParsedFlags;
  try {
    flags = parseFlags(split.flags, keyword === 'HEALTHCHECK' && /^none$/i.test(split.args.text.split(/\s/)[0] ?? '') ? NO_FLAGS : spec);
  } catch (err) {
    if (err instanceof FlagError) return fail(err.message, err.offset, err.flag);
    throw err;
  }
  const args = split.args;
  const str = (name: string): FlagValue | undefined => flags.strings.get(name);
  const requireArgs = (what: string): void => {
    if (args.text === '') fail(`${keyword} requires ${what}`);
  };

  switch (keyword) {
    case 'FROM': {
      const words = splitOnWhitespace(args);
      let name: string | undefined;
      if (words.length === 3 && words[1]!.text.toLowerCase() === 'as') {
        name = words[2]!.text.toLowerCase();
        if (!STAGE_NAME.test(name)) {
          fail(`invalid name for build stage: "${words[2]!.text}", name can't start with a number or contain symbols`, words[2]!.offset);
        }
      } else if (words.length !== 1) {
        fail('FROM requires either one argument (the image) or three (IMAGE AS NAME)', words[1]?.offset);
      }
      const platform = str('platform');
      return { kind: 'FROM', source, image: words[0]!, ...(name ? { name } : {}), ...(platform ? { platform } : {}) };
    }
    case 'RUN': {
      requireArgs('a command');
      const network = str('network');
      if (network && !['default', 'none'].includes(network.value)) {
        const why = network.value === 'host' ? ' (host networking is not available in the build VM)' : '';
        fail(`invalid network mode "${network.value}": use --network=default or --network=none${why}`, network.offset, '--network');
      }
      return {
        kind: 'RUN',
        source,
        form: commandForm(args, fail),
        heredocs: text.heredocs,
        mounts: flags.lists.get('mount') ?? [],
        ...(network ? { network } : {}),
      };
    }
    case 'COPY':
    case 'ADD': {
      const json = parseJsonForm(args.text);
      if (json.kind === 'not-strings') fail('when using JSON array syntax, arrays must be comprised of strings only', args.offset);
      const words: Word[] = json.kind === 'json' ? json.values.map((v) => ({ text: v, offset: args.offset })) : splitOnWhitespace(args);
      if (words.length < 2) fail(`${keyword} requires at least two arguments (sources and a destination)`, args.offset);
      const dest = words[words.length - 1]!;
      const heredocs = new Map(text.heredocs.map((h) => [h.name, h]));
      if (json.kind !== 'json' && parseHeredocWord(dest.text)) fail(`${keyword} cannot accept a heredoc as a destination`, dest.offset);
      const sources: Word[] = [];
      const inline: Heredoc[] = [];
      for (const word of words.slice(0, -1)) {
        const opened = json.kind === 'json' ? undefined : parseHeredocWord(word.text);
        if (opened) inline.push(heredocs.get(opened.name) ?? { ...opened, content: '' });
        else sources.push(word);
      }
      const optional = (name: string): { [key: string]: FlagValue } => {
        const value = str(name);
        return value ? { [name]: value } : {};
      };
      const unpack = flags.bools.get('unpack');
      return {
        kind: keyword,
        source,
        sources,
        inline,
        dest,
        ...optional('from'),
        ...optional('chown'),
        ...optional('chmod'),
        ...optional('checksum'),
        link: flags.bools.get('link') ?? false,
        ...(unpack === undefined ? {} : { unpack }),
      };
    }
    case 'ENV':
    case 'LABEL':
      return { kind: keyword, source, pairs: keyValuePairs(args, escape, keyword, fail) };
    case 'ARG': {
      requireArgs('at least one argument');
      const parsed = splitWords(args, escape).map((word) => {
        const eq = word.text.indexOf('=');
        if (eq < 0) return { name: word.text };
        if (eq === 0) return fail('ARG names can not be blank', word.offset);
        return { name: word.text.slice(0, eq), value: { text: word.text.slice(eq + 1), offset: word.offset + eq + 1 } };
      });
      return { kind: 'ARG', source, args: parsed };
    }
    case 'WORKDIR':
    case 'USER':
    case 'STOPSIGNAL':
    case 'MAINTAINER': {
      // the rest of the line is the value, spaces included (BuildKit's parseString)
      requireArgs('exactly one argument');
      return { kind: keyword, source, value: args };
    }
    case 'EXPOSE':
    case 'VOLUME': {
      requireArgs('at least one argument');
      let values: Word[];
      const json = keyword === 'VOLUME' ? parseJsonForm(args.text) : ({ kind: 'not-json' } as const);
      if (json.kind === 'not-strings') return fail('when using JSON array syntax, arrays must be comprised of strings only', args.offset);
      if (json.kind === 'json') values = json.values.map((v) => ({ text: v, offset: args.offset }));
      else values = splitOnWhitespace(args);
      if (keyword === 'VOLUME' && values.some((v) => v.text.trim() === '')) fail('VOLUME specified can not be an empty string', args.offset);
      return { kind: keyword, source, values };
    }
    case 'CMD':
    case 'ENTRYPOINT':
    case 'SHELL': {
      const form = args.text === '' ? { exec: [] } : commandForm(args, fail);
      if (keyword === 'SHELL') {
        if (!('exec' in form)) fail('SHELL requires the arguments to be in JSON form, e.g. SHELL ["/bin/bash", "-c"]', args.offset);
        else if (form.exec.length === 0) fail('SHELL requires at least one argument', args.offset);
      }
      return { kind: keyword, source, form };
    }
    case 'HEALTHCHECK': {
      requireArgs('at least one argument (NONE, or CMD and a command)');
      const space = /\s+/.exec(args.text);
      const type = (space ? args.text.slice(0, space.index) : args.text).toUpperCase();
      const restOffset = space ? space.index + space[0].length : args.text.length;
      const rest: Word = { text: args.text.slice(restOffset), offset: args.offset + restOffset };
      if (type === 'NONE') {
        if (rest.text !== '') fail('HEALTHCHECK NONE takes no arguments', rest.offset);
        return { kind: 'HEALTHCHECK', source };
      }
      if (type !== 'CMD') fail(`unknown type "${type}" in HEALTHCHECK (try CMD)`, args.offset);
      if (rest.text === '') fail('missing command after HEALTHCHECK CMD', rest.offset);
      const health: HealthcheckInstruction = { kind: 'HEALTHCHECK', source, test: commandForm(rest, fail) };
      const fields = [
        ['interval', 'interval'],
        ['timeout', 'timeout'],
        ['start-period', 'startPeriod'],
        ['start-interval', 'startInterval'],
        ['retries', 'retries'],
      ] as const;
      for (const [flag, field] of fields) {
        const value = str(flag);
        if (value) health[field] = value;
      }
      return health;
    }
    case 'ONBUILD': {
      requireArgs('at least one argument (the trigger instruction)');
      const trigger = splitInstruction(args.text, escape).keyword.text.toUpperCase();
      if (trigger === 'ONBUILD') fail('chaining ONBUILD via `ONBUILD ONBUILD` isn\'t allowed', args.offset);
      if (trigger === 'FROM' || trigger === 'MAINTAINER') fail(`${trigger} isn't allowed as an ONBUILD trigger`, args.offset);
      let expression = text.text.replace(/^\s*ONBUILD\s*/i, '');
      for (const heredoc of text.heredocs) expression += `\n${heredoc.content}${heredoc.name}`;
      // The trigger must be a valid instruction now, not only when an image is built FROM this one.
      const offsetOfTrigger = args.offset;
      const inner: InstructionText = {
        text: args.text,
        startLine: text.startLine,
        endLine: text.endLine,
        heredocs: text.heredocs,
        position: (offset) => text.position(offset + offsetOfTrigger),
      };
      parseInstruction(inner, file, escape);
      return { kind: 'ONBUILD', source, expression };
    }
    default:
      throw new ContainerfileError(`unknown instruction: ${split.keyword.text} (one of FROM, RUN, COPY, ADD, ENV, ARG, WORKDIR, USER, LABEL, EXPOSE, VOLUME, ENTRYPOINT, CMD, SHELL, STOPSIGNAL, HEALTHCHECK, ONBUILD, MAINTAINER)`, { file, ...text.position(split.keyword.offset) });
  }
}

/** Exec form when the arguments are a JSON array of strings; otherwise the shell form. */
function commandForm(args: Word, fail: (reason: string, offset?: number) => never): CommandForm {
  const json = parseJsonForm(args.text);
  if (json.kind === 'not-strings') fail('when using JSON array syntax, arrays must be comprised of strings only', args.offset);
  if (json.kind === 'json') return { exec: json.values };
  return { shell: args.text };
}

/**
 * ENV and LABEL: `key=value key2="v 2" …`, or the legacy `key value` (one pair, the rest of the line
 * the value). Keys and values keep their quotes here; expansion removes them.
 */
function keyValuePairs(args: Word, escape: string, keyword: string, fail: (reason: string, offset?: number) => never): { key: Word; value: Word }[] {
  const words = splitWords(args, escape);
  if (words.length === 0) fail(`${keyword} requires at least one argument`, args.offset);
  if (!words[0]!.text.includes('=')) {
    const parts = /^(\S+)[\t\v\f\r ]+([^]*)$/.exec(args.text);
    if (!parts) return fail(`${keyword} must have two arguments`, args.offset);
    return [{ key: { text: parts[1]!, offset: args.offset }, value: { text: parts[2]!, offset: args.offset + args.text.length - parts[2]!.length } }];
  }
  return words.map((word) => {
    const eq = word.text.indexOf('=');
    if (eq < 0) return fail(`syntax error - can't find = in "${word.text}". Must be of the form: name=value`, word.offset);
    if (eq === 0) return fail(`${keyword} names can not be blank`, word.offset);
    return { key: { text: word.text.slice(0, eq), offset: word.offset }, value: { text: word.text.slice(eq + 1), offset: word.offset + eq + 1 } };
  });
}
