// planContainerfile: a Containerfile and its context → a Plan. The stages are read and checked, the
// global ARGs (before the first FROM, the platform ones, --build-arg) expanded into FROM lines, the
// stages the target needs found (FROM, COPY --from, RUN --mount from=), their bases resolved through
// the caller's hook (the executor knows images; the front end does not), ONBUILD triggers of a base
// run first, and each instruction made into a step.
import { readFile } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import { ImageReferenceError } from '../../errors.js';
import type { ContainerConfig, Platform } from '../../image/config.js';
import { parseImageReference } from '../../image/reference.js';
import { setEnv, envValue } from '../../plan/config-change.js';
import { PLAN_VERSION, type FileSource, type Plan, type Stage, type StageBase, type Step } from '../../plan/plan.js';
import { BuildContextReader } from './context.js';
import { dispatch, type DispatchContext } from './dispatch.js';
import { ignoreMatcher, readIgnoreFile } from './dockerignore.js';
import { ContainerfileError } from './errors.js';
import { parseInstruction, type FromInstruction, type Instruction, type Source } from './instructions.js';
import { readContainerfile } from './lines.js';
import { splitCsv } from './mounts.js';
import { hostPlatform, parsePlatform, platformArgs, PROXY_ARGS } from './platform.js';
import { expandWord, ShellSyntaxError } from './shell-lexer.js';
import { DEFAULT_PATH, StageState } from './stage-state.js';

/** What the executor tells the front end about a base image. */
export interface BaseImage {
  config: ContainerConfig;
  /** the image's top-level `author` */
  author?: string;
  /** the platform the image is for */
  platform: Platform;
}

export interface BaseRequest {
  /** a dockvm IMAGE reference: docker://…, docker-archive:/abs/path…, oci:/abs/dir… */
  ref: string;
  /** the platform asked for (FROM --platform or the build's --platform); undefined: the image's own */
  platform?: Platform;
  /** where the FROM is, for the executor's messages */
  file: string;
  line: number;
}

/**
 * The hook through which the executor gives a base image's config. It is how ONBUILD works: the
 * triggers in the returned config's OnBuild become the stage's first steps, as Docker runs them.
 */
export type ResolveBase = (request: BaseRequest) => Promise<BaseImage>;

export interface PlanContainerfileOptions {
  contextDir: string;
  /** default: CONTEXT/Containerfile, else CONTEXT/Dockerfile */
  file?: string;
  buildArgs?: Readonly<Record<string, string>>;
  /** the stage to build (by name); default: the last */
  target?: string;
  /** the target platform ("linux/arm64"); default: each base's own, TARGETPLATFORM the host's */
  platform?: string | Platform;
  resolveBase: ResolveBase;
}

interface StageHeader {
  index: number;
  from: FromInstruction;
  instructions: Instruction[];
  name?: string;
  base: { kind: 'scratch' } | { kind: 'stage'; index: number } | { kind: 'image'; ref: string };
  /** FROM --platform, expanded */
  platform?: Platform;
}

interface PreparedStage {
  header: StageHeader;
  /** the base image, for an image base */
  image?: BaseImage;
  /** the base's ONBUILD triggers, parsed: the stage's first instructions */
  triggers: Instruction[];
}

export async function planContainerfile(options: PlanContainerfileOptions): Promise<Plan> {
  const contextDir = resolve(options.contextDir);
  const file = await locateContainerfile(contextDir, options.file);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ContainerfileError(`cannot read the Containerfile: ${(err as Error).message}`, { file, line: 0 }, { cause: err });
  }
  const parsed = readContainerfile(text, file);
  const escape = parsed.escape;
  const instructions = parsed.instructions.map((t) => parseInstruction(t, file, escape));

  const buildArgs = new Map(Object.entries(options.buildArgs ?? {}));
  const targetPlatform = options.platform === undefined ? undefined : platformOption(options.platform, file);
  const { metaArgs, headers } = splitStages(instructions, file);
  const target = findTarget(headers, options.target, file);

  // Global scope: the platform args, then ARGs before the first FROM (a --build-arg overrides their default).
  const globalArgs = new Map<string, string>();
  for (const [name, value] of platformArgs(hostPlatform(), targetPlatform ?? hostPlatform(), target.name ?? '')) {
    globalArgs.set(name, buildArgs.get(name) ?? value);
  }
  const declared = new Set<string>();
  for (const arg of metaArgs) {
    for (const { name, value } of arg.args) {
      declared.add(name);
      if (buildArgs.has(name)) globalArgs.set(name, buildArgs.get(name)!);
      else if (value !== undefined) globalArgs.set(name, expandOrFail(value.text, value.offset, (n) => globalArgs.get(n), arg.source, escape).result);
    }
  }
  for (const header of headers) resolveFromLine(header, headers, globalArgs, contextDir, escape);

  const ignore = await readIgnoreFile(contextDir, file);
  const contextReader = new BuildContextReader(contextDir, ignoreMatcher(ignore.patterns));
  const prepared = await prepareStages(headers, target, options.resolveBase, targetPlatform, escape, file);
  const order = dependencyOrder(headers, prepared, target, file);
  const position = new Map(order.map((index, at) => [index, at]));

  const proxyEnv = [...buildArgs].filter(([name]) => PROXY_ARGS.has(name)).map(([name, value]) => `${name}=${value}`);
  const stages: Stage[] = [];
  for (const index of order) {
    const stage = prepared.get(index)!;
    const { header } = stage;
    const start = stageStart(stage, stages, position, targetPlatform);
    const baseConfig = structuredClone(start.config);
    const state = new StageState(start.author === undefined ? { config: start.config } : { config: start.config, author: start.author });
    const steps: Step[] = [];
    const resolveFrom = (name: string, source: Source, flag: string): FileSource => {
      const referenced = stageReference(name, headers, source, flag);
      if (referenced === undefined) return { kind: 'image', ref: imageReference(name, contextDir, source) };
      return { kind: 'stage', stage: position.get(referenced)! };
    };
    const context = (location: Step['location']): DispatchContext => ({ escape, buildArgs, globalArgs, proxyEnv, context: contextReader, resolveFrom, location });
    for (const trigger of stage.triggers) {
      steps.push(await dispatch(trigger, state, context({ file, line: header.from.source.text.startLine })));
    }
    for (const instruction of header.instructions) {
      if (instruction.kind === 'ARG') for (const { name } of instruction.args) declared.add(name);
      steps.push(await dispatch(instruction, state, context({ file, line: instruction.source.text.startLine })));
    }
    const base: StageBase = header.base.kind === 'stage' ? { kind: 'stage', stage: position.get(header.base.index)! } : header.base;
    const planned: Stage = {
      index: header.index,
      ...(header.name ? { name: header.name } : {}),
      line: header.from.source.text.startLine,
      base,
      platform: start.platform,
      baseConfig,
      steps,
      config: state.image.config,
      ...(state.image.author === undefined ? {} : { author: state.image.author }),
    };
    stages.push(planned);
  }

  const unused = [...buildArgs.keys()].filter((name) => !declared.has(name) && !PROXY_ARGS.has(name) && !globalArgs.has(name));
  const warnings = unused.length ? [`build args not declared by any ARG were not used: ${unused.join(', ')}`] : [];
  return {
    version: PLAN_VERSION,
    source: file,
    context: { dir: contextDir, ignore: ignore.patterns },
    stages,
    target: position.get(target.index)!,
    warnings,
  };
}

async function locateContainerfile(contextDir: string, file: string | undefined): Promise<string> {
  if (file !== undefined) return isAbsolute(file) ? file : resolve(file);
  for (const name of ['Containerfile', 'Dockerfile']) {
    const candidate = join(contextDir, name);
    try {
      await readFile(candidate);
      return candidate;
    } catch {
      // try the next name
    }
  }
  throw new ContainerfileError(`no Containerfile or Dockerfile in ${contextDir}; name one with -f FILE`, { file: contextDir, line: 0 });
}

function platformOption(value: string | Platform, file: string): Platform {
  if (typeof value !== 'string') return value;
  const platform = parsePlatform(value);
  if (!platform) throw new ContainerfileError(`invalid platform "${value}": write it as os/arch[/variant], e.g. linux/arm64`, { file, line: 0 });
  return platform;
}

/** ARGs before the first FROM, then the stages; anything else before FROM is an error. */
function splitStages(instructions: Instruction[], file: string): { metaArgs: Extract<Instruction, { kind: 'ARG' }>[]; headers: StageHeader[] } {
  const metaArgs: Extract<Instruction, { kind: 'ARG' }>[] = [];
  const headers: StageHeader[] = [];
  for (const instruction of instructions) {
    if (instruction.kind === 'FROM') {
      headers.push({ index: headers.length, from: instruction, instructions: [], base: { kind: 'scratch' }, ...(instruction.name ? { name: instruction.name } : {}) });
    } else if (headers.length === 0) {
      if (instruction.kind !== 'ARG') {
        throw failAt(instruction.source, `${instruction.kind} before the first FROM: only ARG may come before FROM`);
      }
      metaArgs.push(instruction);
    } else headers[headers.length - 1]!.instructions.push(instruction);
  }
  if (headers.length === 0) throw new ContainerfileError('the file has no FROM: a Containerfile needs at least one stage', { file, line: 1 });
  const names = new Map<string, StageHeader>();
  for (const header of headers) {
    if (header.name === undefined) continue;
    const earlier = names.get(header.name);
    if (earlier) {
      throw failAt(header.from.source, `duplicate stage name "${header.name}" (also on line ${earlier.from.source.text.startLine})`);
    }
    names.set(header.name, header);
  }
  return { metaArgs, headers };
}

function findTarget(headers: StageHeader[], target: string | undefined, file: string): StageHeader {
  if (target === undefined) return headers[headers.length - 1]!;
  const found = headers.find((h) => h.name === target.toLowerCase());
  if (!found) {
    const names = headers.flatMap((h) => (h.name ? [h.name] : []));
    throw new ContainerfileError(`target stage "${target}" could not be found (${names.length ? `stages: ${names.join(', ')}` : 'no stage has a name'})`, { file, line: 0 });
  }
  return found;
}

/** The FROM line's image (global ARGs expanded): scratch, an earlier stage, or an image; and its --platform. */
function resolveFromLine(header: StageHeader, headers: StageHeader[], globalArgs: Map<string, string>, contextDir: string, escape: string): void {
  const { from } = header;
  const expanded = expandOrFail(from.image.text, from.image.offset, (n) => globalArgs.get(n), from.source, escape);
  if (expanded.unsetBare.size > 0) {
    const names = [...expanded.unsetBare];
    throw failAt(
      from.source,
      `${names.map((n) => `$${n}`).join(', ')} in "${from.image.text}" ${names.length > 1 ? 'have' : 'has'} no value: declare ${names.length > 1 ? 'them' : 'it'} with a default before the first FROM (ARG ${names[0]}=…) or pass --build-arg ${names[0]}=…`,
    );
  }
  const name = expanded.result;
  if (name === '') throw failAt(from.source, `base name (${from.image.text}) should not be blank`);
  if (from.platform) {
    const value = expandOrFail(from.platform.value, from.platform.offset, (n) => globalArgs.get(n), from.source, escape, '--platform').result;
    const platform = parsePlatform(value);
    if (!platform) throw failAt(from.source, `invalid platform "${value}": write it as os/arch[/variant], e.g. linux/arm64`, '--platform');
    header.platform = platform;
  }
  if (name === 'scratch') return;
  const stage = headers.find((h) => h.index < header.index && h.name === name.toLowerCase());
  if (stage) header.base = { kind: 'stage', index: stage.index };
  else header.base = { kind: 'image', ref: imageReference(name, contextDir, from.source) };
}

/**
 * A Containerfile's image name as a dockvm IMAGE reference: a plain reference is a registry image
 * (docker://, docker.io implied, as Docker reads it); docker-archive:, oci:, oci-archive: and docker://
 * are dockvm's own forms, with paths relative to the context directory.
 */
export function imageReference(name: string, contextDir: string, source: Source): string {
  const transport = /^(docker-archive|oci-archive|oci):(.*)$/.exec(name);
  let ref: string;
  if (transport) {
    const rest = transport[2]!;
    const colon = rest.indexOf(':');
    const path = colon < 0 ? rest : rest.slice(0, colon);
    ref = `${transport[1]}:${resolve(contextDir, path)}${colon < 0 ? '' : rest.slice(colon)}`;
  } else if (/^(containers-storage|docker-daemon|dir):/.test(name)) {
    // a transport dockvm does not read: the reference parser says so
    ref = name;
  } else ref = name.startsWith('docker://') ? name : `docker://${name}`;
  try {
    parseImageReference(ref);
  } catch (err) {
    if (err instanceof ImageReferenceError) throw failAt(source, err.message);
    throw err;
  }
  return ref;
}

/** A --from / from= value as a stage index, or undefined when it names an image. */
function stageReference(name: string, headers: StageHeader[], source: Source, flag: string): number | undefined {
  if (/^[0-9]+$/.test(name)) {
    const index = Number(name);
    if (index >= headers.length) throw failAt(source, `${flag}=${name}: there is no stage ${index} (stages are numbered from 0; this file has ${headers.length})`, flag);
    return index;
  }
  const found = headers.find((h) => h.name === name.toLowerCase());
  if (found) return found.index;
  // A bare word that is almost a stage's name is a typo, not an image called that.
  if (/^[a-z0-9_.-]+$/i.test(name)) {
    const near = headers.find((h) => h.name !== undefined && editDistance(h.name, name.toLowerCase()) <= 2);
    if (near) throw failAt(source, `${flag}=${name}: no stage is named "${name}" (did you mean "${near.name}"? to copy from an image, name it in full, e.g. docker.io/library/${name}:latest)`, flag);
  }
  return undefined;
}

/** Stage indices an instruction reads from, by the raw --from / from= values (no expansion there). */
function referencedStages(instruction: Instruction, headers: StageHeader[]): number[] {
  const names: string[] = [];
  if (instruction.kind === 'COPY' && instruction.from) names.push(instruction.from.value);
  if (instruction.kind === 'RUN') {
    for (const mount of instruction.mounts) {
      let fields: string[];
      try {
        fields = splitCsv(mount.value);
      } catch {
        continue; // reported when the mount is dispatched
      }
      for (const field of fields) if (/^from=/i.test(field)) names.push(field.slice(5));
    }
  }
  return names.flatMap((name) => {
    if (/^[0-9]+$/.test(name)) return Number(name) < headers.length ? [Number(name)] : [];
    const found = headers.find((h) => h.name === name.toLowerCase());
    return found ? [found.index] : [];
  });
}

/**
 * The stages the target needs, each image base resolved through the hook, with the ONBUILD triggers
 * each stage runs first (an image's OnBuild, or the base stage's ONBUILD instructions). A trigger may
 * read another stage (COPY --from), so this repeats until nothing new is needed.
 */
async function prepareStages(
  headers: StageHeader[],
  target: StageHeader,
  resolveBase: ResolveBase,
  targetPlatform: Platform | undefined,
  escape: string,
  file: string,
): Promise<Map<number, PreparedStage>> {
  const prepared = new Map<number, PreparedStage>();
  const pending = [target.index];
  while (pending.length > 0) {
    const index = pending.pop()!;
    if (prepared.has(index)) continue;
    const header = headers[index]!;
    let image: BaseImage | undefined;
    let triggers: string[] = [];
    if (header.base.kind === 'image') {
      const asked = header.platform ?? targetPlatform;
      image = await resolveBase({ ref: header.base.ref, ...(asked ? { platform: asked } : {}), file, line: header.from.source.text.startLine });
      triggers = (image.config?.OnBuild as string[] | undefined) ?? [];
    } else if (header.base.kind === 'stage') {
      triggers = headers[header.base.index]!.instructions.flatMap((i) => (i.kind === 'ONBUILD' ? [i.expression] : []));
    }
    const stage: PreparedStage = { header, triggers: triggers.map((t) => parseTrigger(t, header, escape, file)), ...(image ? { image } : {}) };
    prepared.set(index, stage);
    pending.push(...stageDependencies(stage, headers).filter((d) => !prepared.has(d)));
  }
  return prepared;
}

function stageDependencies(stage: PreparedStage, headers: StageHeader[]): number[] {
  const deps = [...stage.triggers, ...stage.header.instructions].flatMap((i) => referencedStages(i, headers));
  if (stage.header.base.kind === 'stage') deps.unshift(stage.header.base.index);
  return [...new Set(deps)].sort((a, b) => a - b);
}

/**
 * Where a stage starts: its base's config (BuildKit's empty image for scratch: PATH and WorkingDir
 * "/"), without OnBuild (the triggers run now, and a child does not inherit them), PATH defaulted.
 */
function stageStart(stage: PreparedStage, built: readonly Stage[], position: Map<number, number>, targetPlatform: Platform | undefined): ImageStart {
  const { header } = stage;
  let config: ContainerConfig;
  let author: string | undefined;
  let platform: Platform;
  if (header.base.kind === 'scratch') {
    config = { Env: [`PATH=${DEFAULT_PATH}`], WorkingDir: '/' };
    platform = header.platform ?? targetPlatform ?? hostPlatform();
  } else if (header.base.kind === 'stage') {
    const base = built[position.get(header.base.index)!]!;
    config = structuredClone(base.config);
    author = base.author;
    platform = header.platform ?? base.platform;
  } else {
    const image = stage.image!;
    config = structuredClone(image.config ?? {});
    author = image.author;
    platform = header.platform ?? targetPlatform ?? image.platform;
  }
  delete config.OnBuild;
  if (envValue(config.Env, 'PATH') === undefined) config.Env = setEnv(config.Env ?? [], 'PATH', DEFAULT_PATH);
  return { config, platform, ...(author === undefined ? {} : { author }) };
}

interface ImageStart {
  config: ContainerConfig;
  author?: string;
  platform: Platform;
}

/** An ONBUILD trigger from a base, parsed as an instruction; its errors point at the FROM line. */
function parseTrigger(trigger: string, header: StageHeader, escape: string, file: string): Instruction {
  const line = header.from.source.text.startLine;
  try {
    const parsed = readContainerfile(trigger, file);
    if (parsed.instructions.length !== 1) throw new ContainerfileError('an ONBUILD trigger must be a single instruction', { file, line });
    const instruction = parseInstruction(parsed.instructions[0]!, file, escape);
    const text = instruction.source.text;
    // every part of the trigger is reported at the FROM that ran it
    text.position = () => ({ line, column: 1 });
    text.startLine = line;
    text.endLine = line;
    return instruction;
  } catch (err) {
    if (err instanceof ContainerfileError) {
      throw new ContainerfileError(`the base image's ONBUILD trigger "${trigger}" is invalid: ${err.reason}`, { file, line, instruction: 'FROM' }, { cause: err });
    }
    throw err;
  }
}

/** Stages in the order they must be built (dependencies first, file order otherwise); cycles are errors. */
function dependencyOrder(headers: StageHeader[], prepared: Map<number, PreparedStage>, target: StageHeader, file: string): number[] {
  const order: number[] = [];
  const state = new Map<number, 'visiting' | 'done'>();
  const visit = (index: number, path: number[]): void => {
    if (state.get(index) === 'done') return;
    if (state.get(index) === 'visiting') {
      const cycle = [...path.slice(path.indexOf(index)), index].map((i) => headers[i]!.name ?? String(i));
      throw new ContainerfileError(`circular dependency between stages: ${cycle.join(' -> ')}`, { file, line: headers[index]!.from.source.text.startLine });
    }
    state.set(index, 'visiting');
    for (const dep of stageDependencies(prepared.get(index)!, headers)) visit(dep, [...path, index]);
    state.set(index, 'done');
    order.push(index);
  };
  visit(target.index, []);
  return order;
}

function expandOrFail(text: string, offset: number, env: (name: string) => string | undefined, source: Source, escape: string, flag?: string) {
  try {
    return expandWord(text, env, { escape });
  } catch (err) {
    if (err instanceof ShellSyntaxError) {
      const at = source.text.position(offset + err.index);
      throw new ContainerfileError(err.message, { file: source.file, ...at, instruction: source.keyword, ...(flag ? { flag } : {}) });
    }
    throw err;
  }
}

function failAt(source: Source, reason: string, flag?: string): ContainerfileError {
  return new ContainerfileError(reason, { file: source.file, line: source.text.startLine, instruction: source.keyword, ...(flag ? { flag } : {}) });
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let previous = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const current = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, previous + (a[i - 1] === b[j - 1] ? 0 : 1));
      previous = current;
    }
  }
  return row[b.length]!;
}

