// Load and check a spec.json: every problem is collected (not just the first), each naming its field;
// then defaults are applied and paths resolved relative to the spec file.
import { readFile } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import type { z } from 'zod';
import { SpecError } from '../errors.js';
import { invalidRepositoryName, isValidTag } from '../image/names.js';
import type { ContainerConfig } from '../image/config.js';
import { specSchema, type ParsedSpec } from './schema.js';
import { formatPlatform, parsePlatform } from '../image/platform.js';

/** A checked spec with defaults applied and paths made absolute. */
export interface BuildSpec {
  /** absolute path of the spec file ("" for specs given as objects) */
  readonly specPath: string;
  readonly name: string;
  /** null: derived from the content */
  readonly tag: string | null;
  /** an image reference with any local path made absolute; null = FROM scratch */
  readonly fromImage: string | null;
  readonly fromImageName: string | null;
  readonly fromImageTag: string | null;
  /** absolute paths of directories or tarballs */
  readonly copyToRoot: readonly string[];
  readonly keepContentsDirlinks: boolean;
  readonly runAsRoot: string | null;
  readonly extraCommands: string;
  readonly config: ContainerConfig | null;
  /** null: the base's (the host's for FROM scratch); see src/build/platform.ts */
  readonly architecture: string | null;
  /**
   * dockvm's: the platforms to build, each "linux/ARCH[/VARIANT]" (normalised: "linux/arm64"), one image
   * each, written as an index (src/build/run-as-root-platforms.ts); null: one image, as `architecture` says
   */
  readonly platforms: readonly string[] | null;
  readonly diskSize: number;
  readonly buildVMMemorySize: number;
  /** an ISO-8601 time, or "now" */
  readonly created: string;
  readonly uid: number;
  readonly gid: number;
  readonly network: boolean;
  readonly env: Readonly<Record<string, string>>;
  /** absolute path of a .tar or .tar.gz, or "oci:" + absolute directory */
  readonly output: string;
  /** things worth saying that are not errors (a deprecated field) */
  readonly warnings: readonly string[];
}


const ARCHITECTURES = new Set(['386', 'amd64', 'arm', 'arm64', 'loong64', 'mips', 'mipsle', 'mips64', 'mips64le', 'ppc64', 'ppc64le', 'riscv64', 's390x']);

export async function loadSpec(specPath: string): Promise<BuildSpec> {
  const absolute = resolve(specPath);
  let text: string;
  try {
    text = await readFile(absolute, 'utf8');
  } catch (err) {
    throw new SpecError(`cannot read spec ${specPath}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, [], {
      source: specPath,
      cause: err,
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new SpecError(`spec ${specPath} is not valid JSON: ${(err as Error).message}`, [], { source: specPath, cause: err });
  }
  return checkSpec(json, absolute);
}

/** Check a spec object. `specPath` anchors relative paths (its directory) and names the spec in errors. */
export function checkSpec(input: unknown, specPath: string): BuildSpec {
  const problems: string[] = [];
  const parsed = specSchema.safeParse(input);
  if (!parsed.success) problems.push(...parsed.error.issues.flatMap(describeIssue));
  if (typeof input === 'object' && input !== null && !Array.isArray(input)) {
    problems.push(...crossFieldProblems(input as Record<string, unknown>));
  }
  if (problems.length > 0 || !parsed.success) {
    const count = problems.length === 1 ? '1 problem' : `${problems.length} problems`;
    throw new SpecError(`spec ${specPath || '(object)'} has ${count}:`, problems, { source: specPath });
  }
  return normalize(parsed.data, specPath);
}

function describeIssue(issue: z.core.$ZodIssue): string[] {
  const field = issue.path.length > 0 ? issue.path.map(String).join('.') : '';
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((key) => `${field ? `${field}.` : ''}${key}: unknown field (see the spec.json fields in the README)`);
  }
  if (issue.code === 'invalid_type' && field === '') return [`the spec must be a JSON object`];
  if (issue.code === 'invalid_key') return [`${field}: not a valid name: ${issue.issues.map((inner) => inner.message).join('; ')}`];
  return [`${field}: ${issue.message}`];
}

/** Checks that span fields or need more than a type, run on the raw input so every problem is reported. */
function crossFieldProblems(spec: Record<string, unknown>): string[] {
  const problems: string[] = [];
  const present = (key: string) => spec[key] !== undefined && spec[key] !== null;
  if (!('name' in spec)) problems.push('name: required (the image name, e.g. "my/image")');
  if (typeof spec.name === 'string') {
    const why = invalidRepositoryName(spec.name);
    if (why) problems.push(`name: "${spec.name}" is not a valid image name: it ${why}`);
  }
  if (typeof spec.tag === 'string' && !isValidTag(spec.tag)) {
    problems.push(`tag: "${spec.tag}" is not a valid tag (letters, digits, _ . -; at most 128; not starting with . or -)`);
  }
  if (present('contents') && present('copyToRoot')) {
    problems.push('contents: deprecated alias of copyToRoot; set only copyToRoot');
  }
  if (present('fromImageName') !== present('fromImageTag')) {
    problems.push(`${present('fromImageName') ? 'fromImageTag' : 'fromImageName'}: fromImageName and fromImageTag go together; set both or neither`);
  }
  if ((present('fromImageName') || present('fromImageTag')) && !present('fromImage')) {
    problems.push('fromImage: fromImageName/fromImageTag pick an image from fromImage, which is not set');
  }
  if (typeof spec.created === 'string' && spec.created !== 'now' && Number.isNaN(Date.parse(spec.created))) {
    problems.push(`created: "${spec.created}" is not an ISO-8601 time or "now"`);
  }
  if (typeof spec.architecture === 'string' && !ARCHITECTURES.has(spec.architecture)) {
    problems.push(`architecture: "${spec.architecture}" is not a Go architecture name (amd64, arm64, …)`);
  }
  if (typeof spec.output === 'string' && !/(\.tar|\.tar\.gz)$/.test(spec.output) && !spec.output.startsWith('oci:')) {
    problems.push(`output: "${spec.output}" must end in .tar or .tar.gz, or be oci:DIR`);
  }
  problems.push(...platformProblems(spec));
  return problems;
}

/** `platforms`: each one a linux platform, none twice, agreeing with `architecture`; several need an output that holds an index. */
function platformProblems(spec: Record<string, unknown>): string[] {
  if (!Array.isArray(spec.platforms) || !spec.platforms.every((p) => typeof p === 'string')) return [];
  const problems: string[] = [];
  const names: string[] = [];
  for (const [i, text] of (spec.platforms as string[]).entries()) {
    const platform = parsePlatform(text);
    if (!platform || platform.os !== 'linux' || !ARCHITECTURES.has(platform.architecture)) {
      problems.push(`platforms.${i}: "${text}" is not a linux platform; write linux/ARCH[/VARIANT], e.g. linux/arm64`);
      continue;
    }
    const name = formatPlatform(platform);
    if (names.includes(name)) problems.push(`platforms.${i}: ${name} is listed twice`);
    names.push(name);
  }
  if (problems.length > 0) return problems;
  const architectures = [...new Set(names.map((name) => name.split('/')[1]!))];
  if (typeof spec.architecture === 'string' && architectures.some((architecture) => architecture !== spec.architecture)) {
    problems.push(`architecture: "${spec.architecture}" disagrees with platforms (${names.join(', ')}); drop architecture (platforms says what to build) or list only ${spec.architecture}`);
  }
  const output = typeof spec.output === 'string' ? spec.output : '';
  if (names.length > 1 && !output.startsWith('oci:')) {
    problems.push(`output: ${output ? `"${output}" is` : 'the default (NAME.tar.gz) is'} a docker-archive, which holds one platform's image; platforms lists ${names.length}: set output to oci:DIR (an OCI layout holding their index)`);
  }
  return problems;
}

function normalize(spec: ParsedSpec, specPath: string): BuildSpec {
  const base = specPath ? dirname(specPath) : process.cwd();
  const warnings: string[] = [];
  let copy = spec.copyToRoot;
  if (spec.contents !== undefined && spec.contents !== null) {
    warnings.push('contents is deprecated: rename it to copyToRoot');
    copy = spec.contents;
  }
  const copyList = copy === null ? [] : Array.isArray(copy) ? copy : [copy];
  const output = spec.output ?? `${basename(spec.name)}.tar.gz`;
  return {
    specPath,
    name: spec.name,
    tag: spec.tag,
    fromImage: spec.fromImage === null ? null : resolveImagePath(spec.fromImage, base),
    fromImageName: spec.fromImageName,
    fromImageTag: spec.fromImageTag,
    copyToRoot: copyList.map((path) => resolve(base, path)),
    keepContentsDirlinks: spec.keepContentsDirlinks,
    runAsRoot: spec.runAsRoot,
    extraCommands: spec.extraCommands,
    config: spec.config as ContainerConfig | null,
    architecture: spec.architecture ?? null,
    platforms: spec.platforms ? spec.platforms.map((text) => formatPlatform(parsePlatform(text)!)) : null,
    diskSize: spec.diskSize,
    buildVMMemorySize: spec.buildVMMemorySize,
    created: spec.created,
    uid: spec.uid,
    gid: spec.gid,
    network: spec.network,
    env: spec.env,
    output: output.startsWith('oci:') ? `oci:${resolve(base, output.slice(4))}` : resolve(base, output),
    warnings,
  };
}

/** Make the local path inside an image reference absolute; registry references are left alone. */
export function resolveImagePath(reference: string, base: string): string {
  const match = /^(docker-archive|oci|oci-archive):(.*)$/.exec(reference);
  if (match) {
    const [, transport, rest] = match as unknown as [string, string, string];
    const colon = rest.indexOf(':');
    const path = colon < 0 ? rest : rest.slice(0, colon);
    const suffix = colon < 0 ? '' : rest.slice(colon);
    return `${transport}:${resolve(base, path)}${suffix}`;
  }
  if (reference.includes('://')) return reference;
  return resolve(base, reference);
}
