// One instruction of a stage → its step: variables expanded where Docker expands them (not in RUN,
// CMD, ENTRYPOINT, SHELL, HEALTHCHECK, ONBUILD: the shell or a later build does), paths resolved
// against WORKDIR, the config change made, and the history entry written as BuildKit writes it
// (dockerfile2llb/convert.go: "RUN |1 A=b /bin/sh -c … # buildkit", "COPY --chown=u a /b # buildkit",
// "ENV A=b", "CMD [\"x\"]", …).
import { posix } from 'node:path';
import type { ConfigChange, CopyStep, FileSource, Healthcheck, InlineFile, RunMount, RunStep, Step, StepLocation, UrlSource } from '../../plan/plan.js';
import { checkSignal, parsePortSpec, ValueError } from './config-values.js';
import { ContextError, type BuildContextReader } from './context.js';
import { ContainerfileError } from './errors.js';
import type { FlagValue } from './flags.js';
import { goDuration, goList, goQuoteList, parseGoDuration } from './go-format.js';
import type {
  ArgInstruction,
  CommandForm,
  CommandInstruction,
  CopyInstruction,
  HealthcheckInstruction,
  Instruction,
  KeyValueInstruction,
  ListInstruction,
  RunInstruction,
  SingleValueInstruction,
  Source,
} from './instructions.js';
import { parseHeredocWord } from './lines.js';
import { MountError, parseMount } from './mounts.js';
import { expandWord, expandWords, ShellSyntaxError, type EnvLookup } from './shell-lexer.js';
import type { StageState } from './stage-state.js';
import type { Word } from './words.js';

export interface DispatchContext {
  escape: string;
  /** --build-arg values */
  buildArgs: ReadonlyMap<string, string>;
  /** the global ARGs (before the first FROM, and the platform ones): what `ARG NAME` in a stage imports */
  globalArgs: ReadonlyMap<string, string>;
  /** proxy build args, NAME=value, for every RUN */
  proxyEnv: string[];
  context: BuildContextReader;
  /** what --from= / from= names: a stage (by name or index) or an image */
  resolveFrom: (name: string, source: Source, flag: string) => FileSource;
  /** where steps are said to come from (an ONBUILD trigger: the FROM line) */
  location: StepLocation;
}

/** A stage's instruction as a step (ARG, ENV… are config steps too: they write history). */
export async function dispatch(instruction: Instruction, state: StageState, ctx: DispatchContext): Promise<Step> {
  const d = new Dispatcher(instruction.source, state, ctx);
  switch (instruction.kind) {
    case 'FROM':
      throw d.fail('FROM inside a stage cannot be dispatched');
    case 'RUN':
      return d.run(instruction);
    case 'COPY':
    case 'ADD':
      return d.copy(instruction);
    case 'ENV':
    case 'LABEL':
      return d.keyValues(instruction);
    case 'ARG':
      return d.arg(instruction);
    case 'WORKDIR':
    case 'USER':
    case 'STOPSIGNAL':
    case 'MAINTAINER':
      return d.single(instruction);
    case 'EXPOSE':
    case 'VOLUME':
      return d.list(instruction);
    case 'CMD':
    case 'ENTRYPOINT':
    case 'SHELL':
      return d.command(instruction);
    case 'HEALTHCHECK':
      return d.healthcheck(instruction);
    case 'ONBUILD':
      return d.config('ONBUILD', { op: 'onbuild', trigger: instruction.expression }, null, instruction.source.original);
  }
}

class Dispatcher {
  constructor(
    private readonly source: Source,
    private readonly state: StageState,
    private readonly ctx: DispatchContext,
  ) {}

  fail(reason: string, offset?: number, flag?: string): ContainerfileError {
    const { text, file, keyword } = this.source;
    const at = offset === undefined ? { line: text.startLine } : text.position(offset);
    return new ContainerfileError(reason, { file, ...at, instruction: keyword, ...(flag ? { flag } : {}) });
  }

  /** Expand one word with the stage's variables (BuildKit's ProcessWord). */
  expand(word: Word, flag?: string, env: EnvLookup = this.state.lookup): string {
    try {
      return expandWord(word.text, env, { escape: this.ctx.escape }).result;
    } catch (err) {
      if (err instanceof ShellSyntaxError) throw this.fail(err.message, word.offset + err.index, flag);
      throw err;
    }
  }

  expandFlag(flag: FlagValue | undefined, name: string): string | undefined {
    if (!flag) return undefined;
    // the value starts after "--name=" in the flag's text
    return this.expand({ text: flag.value, offset: flag.offset + name.length + 3 }, `--${name}`);
  }

  /** The instruction as written, variables expanded, for the cache key. */
  private cacheText(...parts: string[]): string {
    return [this.source.keyword, ...parts.filter((p) => p !== '')].join(' ');
  }

  private common(createdBy: string | null, emptyLayer: boolean, cacheText: string): Pick<Step, 'location' | 'createdBy' | 'emptyLayer' | 'cacheText'> {
    return { location: this.ctx.location, createdBy, emptyLayer, cacheText };
  }

  config(instruction: Extract<Step, { kind: 'config' }>['instruction'], change: ConfigChange, createdBy: string | null, cacheText: string): Step {
    this.state.apply(change);
    return { kind: 'config', instruction, change, ...this.common(createdBy, true, cacheText) };
  }

  run(run: RunInstruction): Step {
    const workdir = this.state.workdir();
    const mounts: RunMount[] = run.mounts.map((flag) => {
      const value = mountValue(flag);
      try {
        return parseMount(value.text, {
          expand: (field) => this.expand({ text: field, offset: value.offset }, '--mount'),
          resolveFrom: (name) => this.ctx.resolveFrom(name, this.source, '--mount'),
          workdir,
        });
      } catch (err) {
        if (err instanceof MountError) throw this.fail(err.message, flag.offset, '--mount');
        throw err;
      }
    });
    let args: string[];
    const inlineFiles: InlineFile[] = [];
    let prependShell = false;
    if ('exec' in run.form) args = run.form.exec;
    else {
      prependShell = true;
      args = [run.form.shell];
      if (run.heredocs.length > 0) args = [this.heredocCommand(run.form.shell, run, inlineFiles)];
    }
    const argv = prependShell ? [...this.state.shell(), ...args] : args;
    if (argv.length === 0) throw this.fail('RUN requires a command');
    const network = run.network?.value === 'none' ? 'none' : 'default';
    const flags = [...run.mounts.map((m) => `--mount=${m.value}`), ...(run.network ? [`--network=${run.network.value}`] : [])];
    const step: RunStep = {
      kind: 'run',
      argv,
      env: this.state.environment(),
      proxyEnv: [...this.ctx.proxyEnv],
      user: this.state.config.User ?? '',
      workdir,
      mounts,
      network,
      inlineFiles,
      ...this.common(
        `RUN ${this.state.argsPrefix()}${argv.join(' ')} # buildkit`,
        false,
        this.cacheText(...flags, JSON.stringify(argv)),
      ),
    };
    return step;
  }

  /**
   * BuildKit's heredoc RUN: one heredoc that is the whole command runs its body (a body starting
   * with #! is run as a file, mounted at /dev/pipes/NAME); anything else is handed to the shell as
   * the command line followed by each body and its delimiter, and the shell reads them as heredocs.
   */
  private heredocCommand(command: string, run: RunInstruction, inlineFiles: InlineFile[]): string {
    const first = run.heredocs[0]!;
    const whole = parseHeredocWord(command.trim());
    if (whole) {
      const data = first.chomp ? first.content.replace(/^\t+/gm, '') : first.content;
      if (data.startsWith('#!')) {
        const path = `/dev/pipes/${first.name}`;
        inlineFiles.push({ path, data, mode: 0o755 });
        return path;
      }
      return data;
    }
    return command + run.heredocs.map((h) => `\n${h.content}${h.name}`).join('');
  }

  async copy(copy: CopyInstruction): Promise<Step> {
    const isAdd = copy.kind === 'ADD';
    if (copy.from && /\$/.test(copy.from.value)) {
      throw this.fail(
        'variable expansion is not supported for --from; define a stage with FROM ${ARG} (a global ARG) and copy from it',
        copy.from.offset,
        '--from',
      );
    }
    const from: FileSource = copy.from ? this.ctx.resolveFrom(copy.from.value, this.source, '--from') : { kind: 'context' };
    const chown = this.expandFlag(copy.chown, 'chown');
    const chmodText = this.expandFlag(copy.chmod, 'chmod');
    const checksum = this.expandFlag(copy.checksum, 'checksum');
    const sources = copy.sources.map((word) => this.expand(word));
    const destWritten = this.expand(copy.dest);
    let chmod: number | undefined;
    if (chmodText !== undefined && chmodText !== '') {
      if (!/^[0-7]+$/.test(chmodText) || parseInt(chmodText, 8) > 0o7777) {
        throw this.fail(`invalid chmod parameter: '${chmodText}': give an octal mode between 0 and 07777 (symbolic modes are not supported)`, copy.chmod!.offset, '--chmod');
      }
      chmod = parseInt(chmodText, 8);
    }

    const urls: UrlSource[] = [];
    const local: string[] = [];
    for (const [i, src] of sources.entries()) {
      if (isGitSource(src)) {
        throw this.fail(`"${src}" is a git repository: ${isAdd ? 'ADD of a git repository is not supported; clone it in a RUN step' : "a git source can't be used with COPY"}`, copy.sources[i]!.offset);
      }
      if (/^https?:\/\//.test(src)) {
        if (!isAdd) throw this.fail(`"${src}" is a URL: COPY copies from the context or a stage; use ADD to download`, copy.sources[i]!.offset);
        urls.push({ url: src, filename: urlFilename(src), unpack: copy.unpack ?? false });
      } else local.push(src);
    }
    if (checksum !== undefined && checksum !== '') {
      if (sources.length !== 1 || urls.length !== 1) throw this.fail('--checksum needs exactly one source, and it must be an http(s) URL', copy.checksum!.offset, '--checksum');
      if (!/^sha(256:[0-9a-f]{64}|384:[0-9a-f]{96}|512:[0-9a-f]{128})$/.test(checksum)) {
        throw this.fail(`invalid checksum "${checksum}": write it as sha256:<64 hex digits>`, copy.checksum!.offset, '--checksum');
      }
      urls[0]!.checksum = checksum;
    }

    const dest = this.destination(destWritten);
    const sourceCount = sources.length + copy.inline.length;
    const endsWithSlash = dest.endsWith('/');
    if (sourceCount > 1 && !endsWithSlash) {
      throw this.fail(`when ${copy.kind} has more than one source, the destination must be a directory and end with a / ("${destWritten}/")`, copy.dest.offset);
    }

    const inlineFiles: InlineFile[] = copy.inline.map((heredoc) => {
      const body = heredoc.chomp ? heredoc.content.replace(/^\t+/gm, '') : heredoc.content;
      // heredoc bodies are expanded without quote processing, with "\" as the escape (BuildKit's ExpandRaw)
      const data = heredoc.expand ? this.expandRaw(body) : body;
      return { path: heredoc.name, data, mode: 0o644 };
    });

    let destIsDir = endsWithSlash;
    let entries: CopyStep['entries'] = [];
    const patterns = from.kind === 'context' ? local : local.map((src) => posix.join('/', src));
    if (from.kind === 'context' && local.length > 0) {
      try {
        const selection = await this.ctx.context.select(local, (named, wildcard) => {
          destIsDir ||= (wildcard && named > 1) || sourceCount > 1;
          return destIsDir;
        });
        entries = selection.entries;
      } catch (err) {
        if (err instanceof ContextError) throw this.fail(err.message);
        throw err;
      }
    }
    destIsDir ||= sourceCount > 1;

    const flagsText = `${chown ? ` --chown=${chown}` : ''}${chmodText ? ` --chmod=${chmodText}` : ''}`;
    const createdBy = `${copy.kind}${flagsText}${sources.map((s) => ` ${s}`).join('')}${copy.inline.map((h) => ` <<${h.name}`).join('')} ${destWritten} # buildkit`;
    const cacheFlags = [
      copy.from ? `--from=${copy.from.value}` : '',
      chown ? `--chown=${chown}` : '',
      chmodText ? `--chmod=${chmodText}` : '',
      copy.link ? '--link' : '',
      checksum ? `--checksum=${checksum}` : '',
      copy.unpack === undefined ? '' : `--unpack=${copy.unpack}`,
    ];
    const step: CopyStep = {
      kind: 'copy',
      instruction: copy.kind,
      from,
      patterns,
      entries,
      inlineFiles,
      urls,
      dest,
      destIsDir,
      link: copy.link,
      unpack: isAdd && (copy.unpack ?? true),
      ...(chown ? { chown } : {}),
      ...(chmod !== undefined ? { chmod } : {}),
      ...this.common(
        createdBy,
        false,
        this.cacheText(...cacheFlags, ...sources, ...copy.inline.map((h, i) => `<<${h.name}\n${inlineFiles[i]!.data}${h.name}`), destWritten),
      ),
    };
    return step;
  }

  /** BuildKit's pathRelativeToWorkingDir: absolute, cleaned, a trailing "/" kept; "." means the workdir as a directory. */
  private destination(written: string): string {
    const dest = written === '' || written === '.' ? './' : written;
    const slash = dest.endsWith('/') || dest.endsWith('/.') || dest === '.';
    const joined = posix.resolve(this.state.workdir(), dest);
    return slash && joined !== '/' ? `${joined}/` : joined;
  }

  private expandRaw(body: string): string {
    try {
      return expandWord(body, this.state.lookup, { skipProcessQuotes: true }).result;
    } catch (err) {
      if (err instanceof ShellSyntaxError) throw this.fail(`in a heredoc: ${err.message}`);
      throw err;
    }
  }

  keyValues(kv: KeyValueInstruction): Step {
    // every pair sees the variables as they were before this instruction (Docker's rule)
    const pairs = kv.pairs.map(({ key, value }) => [this.expand(key), this.expand(value)] as [string, string]);
    if (pairs.some(([key]) => key === '')) throw this.fail(`${kv.kind} names can not be blank`);
    const text = pairs.map(([k, v]) => `${k}=${v}`).join(' ');
    if (kv.kind === 'ENV') return this.config('ENV', { op: 'env', vars: pairs }, `ENV ${text}`, this.cacheText(text));
    return this.config('LABEL', { op: 'labels', labels: pairs }, `LABEL ${text}`, this.cacheText(text));
  }

  arg(arg: ArgInstruction): Step {
    const written: string[] = [];
    for (const { name, value } of arg.args) {
      let resolved: string | undefined;
      if (this.ctx.buildArgs.has(name)) resolved = this.ctx.buildArgs.get(name);
      else if (value !== undefined) resolved = this.expand(value);
      else resolved = this.ctx.globalArgs.get(name); // `ARG NAME` in a stage imports the global default
      this.state.declareArg(resolved === undefined ? { key: name } : { key: name, value: resolved });
      written.push(resolved === undefined ? name : `${name}=${resolved}`);
    }
    return this.config('ARG', { op: 'none' }, `ARG ${written.join(' ')}`, this.cacheText(...written));
  }

  single(instruction: SingleValueInstruction): Step {
    switch (instruction.kind) {
      case 'WORKDIR': {
        const written = this.expand(instruction.value);
        if (written === '') throw this.fail('WORKDIR requires a path', instruction.value.offset);
        const path = posix.resolve(this.state.workdir(), written);
        const change = { op: 'workdir', path } as const;
        const user = this.state.config.User ?? '';
        this.state.apply(change);
        return { kind: 'workdir', path, user, change, ...this.common(`WORKDIR ${path}`, path === '/', this.cacheText(path)) };
      }
      case 'USER': {
        const user = this.expand(instruction.value);
        if (user === '') throw this.fail('USER requires a user name or id', instruction.value.offset);
        return this.config('USER', { op: 'user', user }, `USER ${user}`, this.cacheText(user));
      }
      case 'STOPSIGNAL': {
        const signal = this.expand(instruction.value);
        try {
          checkSignal(signal);
        } catch (err) {
          if (err instanceof ValueError) throw this.fail(err.message, instruction.value.offset);
          throw err;
        }
        return this.config('STOPSIGNAL', { op: 'stopsignal', signal }, `STOPSIGNAL ${signal}`, this.cacheText(signal));
      }
      case 'MAINTAINER':
        return this.config('MAINTAINER', { op: 'author', author: instruction.value.text }, `MAINTAINER ${instruction.value.text}`, this.cacheText(instruction.value.text));
    }
  }

  list(instruction: ListInstruction): Step {
    if (instruction.kind === 'VOLUME') {
      const paths = instruction.values.map((word) => this.expand(word));
      if (paths.some((p) => p === '')) throw this.fail('VOLUME specified can not be an empty string');
      return this.config('VOLUME', { op: 'volumes', paths }, `VOLUME ${goList(paths)}`, this.cacheText(...paths));
    }
    // BuildKit sorts the ports as written, then expands and splits each
    const sorted = [...instruction.values].sort((a, b) => Buffer.compare(Buffer.from(a.text), Buffer.from(b.text)));
    const ports: string[] = [];
    for (const word of sorted) {
      let words: string[];
      try {
        words = expandWords(word.text, this.state.lookup, { escape: this.ctx.escape });
      } catch (err) {
        if (err instanceof ShellSyntaxError) throw this.fail(err.message, word.offset + err.index);
        throw err;
      }
      for (const spec of words) {
        try {
          ports.push(...parsePortSpec(spec));
        } catch (err) {
          if (err instanceof ValueError) throw this.fail(err.message, word.offset);
          throw err;
        }
      }
    }
    return this.config('EXPOSE', { op: 'expose', ports }, `EXPOSE ${goList(ports)}`, this.cacheText(...ports));
  }

  command(instruction: CommandInstruction): Step {
    const argv = this.withShell(instruction.form);
    switch (instruction.kind) {
      case 'SHELL':
        return this.config('SHELL', { op: 'shell', argv }, `SHELL ${goList(argv)}`, this.cacheText(JSON.stringify(argv)));
      case 'CMD':
        this.state.cmdSet = true;
        return this.config('CMD', { op: 'cmd', argv }, `CMD ${goQuoteList(argv)}`, this.cacheText(JSON.stringify(argv)));
      case 'ENTRYPOINT': {
        const change = { op: 'entrypoint', argv, resetCmd: !this.state.cmdSet } as const;
        return this.config('ENTRYPOINT', change, `ENTRYPOINT ${goQuoteList(argv)}`, this.cacheText(JSON.stringify(argv)));
      }
    }
  }

  private withShell(form: CommandForm): string[] {
    return 'exec' in form ? [...form.exec] : [...this.state.shell(), form.shell];
  }

  healthcheck(instruction: HealthcheckInstruction): Step {
    const health: Healthcheck = { Test: ['NONE'] };
    if (instruction.test) {
      health.Test = 'exec' in instruction.test ? ['CMD', ...instruction.test.exec] : ['CMD-SHELL', instruction.test.shell];
      if (health.Test.length === 1) throw this.fail('missing command after HEALTHCHECK CMD');
      const durations = [
        ['interval', 'Interval', instruction.interval],
        ['timeout', 'Timeout', instruction.timeout],
        ['start-period', 'StartPeriod', instruction.startPeriod],
        ['start-interval', 'StartInterval', instruction.startInterval],
      ] as const;
      for (const [flag, field, value] of durations) {
        if (!value || value.value === '') continue;
        const ns = parseGoDuration(value.value);
        if (ns === undefined) throw this.fail(`time: invalid duration "${value.value}" (write it like 30s, 1m30s, 500ms)`, value.offset, `--${flag}`);
        if (ns !== 0 && ns < 1e6) throw this.fail(`--${flag} cannot be less than 1ms`, value.offset, `--${flag}`);
        if (ns !== 0) health[field] = ns;
      }
      if (instruction.retries && instruction.retries.value !== '') {
        if (!/^-?[0-9]+$/.test(instruction.retries.value)) throw this.fail(`invalid --retries "${instruction.retries.value}": give a whole number`, instruction.retries.offset, '--retries');
        const retries = Number(instruction.retries.value);
        if (retries < 0) throw this.fail(`--retries cannot be negative (${retries})`, instruction.retries.offset, '--retries');
        if (retries !== 0) health.Retries = retries;
      }
    }
    const createdBy =
      `HEALTHCHECK {Test:${goList(health.Test)} Interval:${goDuration(health.Interval ?? 0)} Timeout:${goDuration(health.Timeout ?? 0)} ` +
      `StartPeriod:${goDuration(health.StartPeriod ?? 0)} StartInterval:${goDuration(health.StartInterval ?? 0)} Retries:${health.Retries ?? 0}}`;
    return this.config('HEALTHCHECK', { op: 'healthcheck', healthcheck: health }, createdBy, this.cacheText(JSON.stringify(health)));
  }
}

/** A --mount flag's value and where it starts (its fields are expanded one by one). */
function mountValue(flag: FlagValue): Word {
  return { text: flag.value, offset: flag.offset + '--mount='.length };
}

/** BuildKit's notion of a git source: git@…, git://…, ssh://…, or an http(s) URL of a .git repository. */
function isGitSource(src: string): boolean {
  if (/^(git@|git:\/\/|ssh:\/\/)/.test(src)) return true;
  if (/^https?:\/\//.test(src)) {
    const path = src.replace(/[#?].*$/, '');
    return /\.git$/.test(path) || /\.git#/.test(src);
  }
  return false;
}

/** The name a downloaded file gets: the URL path's last component (BuildKit: "__unnamed__" when none). */
function urlFilename(url: string): string {
  try {
    const base = posix.basename(new URL(url).pathname);
    return base === '' || base === '.' || base === '/' ? '__unnamed__' : decodeURIComponent(base);
  } catch {
    return '__unnamed__';
  }
}
