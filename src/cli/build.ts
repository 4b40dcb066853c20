// dockvm build [CONTEXT] [-f FILE] [-t NAME[:TAG]]… [-o OUT] …: a Containerfile built in the VM, one
// layer per RUN/COPY/ADD/WORKDIR, through the build cache (src/executor/build.ts).
import { Command, Option } from 'commander';
import { installSignalHandlers } from '../cleanup.js';
import { UsageError, VmError } from '../errors.js';
import { printJson, say } from './io.js';
import { parseBool } from './pull.js';

interface BuildFlags {
  file?: string;
  tag?: string[];
  output?: string;
  buildArg?: string[];
  buildContext?: string[];
  target?: string;
  platform?: string;
  cache: boolean;
  cacheFrom?: string[];
  cacheTo?: string[];
  secret?: string[];
  network: 'default' | 'none';
  timestamp?: number;
  memory?: number;
  timeout?: number;
  tlsVerify: boolean;
  creds?: string;
  json?: boolean;
}

export function registerBuild(program: Command): void {
  program
    .command('build')
    .description(
      'Build a Containerfile (or Dockerfile) with Docker\'s semantics in a throwaway VM: each stage\'s RUN, ' +
        'COPY, ADD and WORKDIR steps in one boot, each step its own reproducible layer. Steps found in the build ' +
        'cache (local, or a registry with --cache-from) reuse their layers without a VM: an unchanged rebuild boots ' +
        'none. RUN steps have the network unless --network=none. Writes a docker-archive (.tar, .tar.gz), an OCI ' +
        'layout (oci:DIR), an OCI archive (oci-archive:PATH) or pushes (docker://REF). Progress on stderr as ' +
        'BuildKit shows it.',
    )
    .argument('[context]', 'the build context directory', '.')
    .option('-f, --file <file>', 'the Containerfile (default CONTEXT/Containerfile, else CONTEXT/Dockerfile)')
    .addOption(new Option('-t, --tag <name>', 'NAME[:TAG] of the image (repeatable; :latest when untagged)').argParser(collect))
    .option('-o, --output <out>', 'where the image goes: .tar, .tar.gz, oci:DIR, oci-archive:PATH or docker://REF (default: NAME.tar from the first -t)')
    .addOption(new Option('--build-arg <arg>', 'K=V for an ARG (repeatable; K alone takes the value from the environment)').argParser(collect))
    .option('--target <stage>', 'build this stage (by name) instead of the last')
    .option(
      '--platform <platforms>',
      'os/arch to build for: linux/amd64 or linux/arm64, each stage in a VM of its platform (default: each base image\'s own); ' +
        'several, comma-separated (linux/amd64,linux/arm64): one image each, every RUN on its own CPU, written as an OCI image index ' +
        '(to oci:DIR, oci-archive:PATH or docker://REF; a docker-archive holds one platform); a base that is an index gives each platform its image',
    )
    .addOption(new Option('--build-context <name=image>', 'NAME=IMAGE: use IMAGE (any dockvm IMAGE form) wherever FROM or --from names NAME (repeatable)').argParser(collect))
    .option('--no-cache', 'build every step even when the build cache has it (what is built is still stored)')
    .addOption(new Option('--cache-from <ref>', 'look for cached steps in this registry too, after the local cache: docker://HOST/REPO (repeatable)').argParser(collect))
    .addOption(new Option('--cache-to <ref>', 'push each step\'s cache entry to this registry: docker://HOST/REPO (repeatable)').argParser(collect))
    .addOption(new Option('--secret <spec>', 'id=ID,src=PATH: a file for RUN --mount=type=secret,id=ID (never in a layer, the history or a log; repeatable)').argParser(collect))
    .addOption(new Option('--network <mode>', 'default: RUN steps have the network; none: no step has it').choices(['default', 'none']).default('default'))
    .addOption(new Option('--timestamp <seconds>', 'the created time and the mtime clamp (default $SOURCE_DATE_EPOCH, else 1970-01-01T00:00:01Z)').argParser(nonNegativeInteger))
    .addOption(new Option('--memory <MiB>', 'build VM memory (default 1024)').argParser(positiveInteger))
    .addOption(new Option('--timeout <seconds>', 'give up when the build runs longer than this (its VMs are stopped)').argParser(positiveSeconds))
    .option('--tls-verify [bool]', 'false: allow plain HTTP to registries (loopback registries may use it anyway)', parseBool, true)
    .option('--creds <user:pass>', 'registry credentials (else from $REGISTRY_AUTH_FILE or ~/.docker/config.json)')
    .option('--json', 'print the result as one JSON document: name, tags, output, image ID, layers, steps with their cache hits, VM boots; with several platforms the index digest and each platform\'s image ID, manifest digest and layers')
    .action(async (context: string, flags: BuildFlags) => {
      installSignalHandlers();
      // loaded on use: --help and other commands start faster
      const { buildContainerfile } = await import('../executor/build.js');
      const { parseCacheRepository } = await import('../cache/registry-store.js');
      const { registryOptions } = await import('../transport/registry/registry-options.js');
      const { BuildProgress } = await import('./build-progress.js');
      for (const ref of [...(flags.cacheFrom ?? []), ...(flags.cacheTo ?? [])]) usage(() => parseCacheRepository(ref));
      if (!flags.tag?.length && flags.output === undefined) throw new UsageError('dockvm build needs -t NAME[:TAG] or -o OUT: say what the image is called, or where it goes');
      const registry = registryOptions({ tlsVerify: flags.tlsVerify, ...(flags.creds !== undefined ? { creds: flags.creds } : {}) });
      const progress = new BuildProgress();
      const result = await buildContainerfile({
        contextDir: context,
        ...(flags.file !== undefined ? { file: flags.file } : {}),
        tags: flags.tag ?? [],
        ...(flags.output !== undefined ? { output: flags.output } : {}),
        buildArgs: buildArgs(flags.buildArg ?? []),
        buildContexts: pairs(flags.buildContext ?? [], '--build-context'),
        ...(flags.target !== undefined ? { target: flags.target } : {}),
        ...(flags.platform !== undefined ? { platform: flags.platform } : {}),
        secrets: secrets(flags.secret ?? []),
        network: flags.network,
        ...(flags.timestamp !== undefined ? { timestamp: flags.timestamp } : {}),
        ...(flags.memory !== undefined ? { memoryMiB: flags.memory } : {}),
        ...(flags.timeout !== undefined ? { signal: timeoutSignal(flags.timeout) } : {}),
        cache: { noCache: !flags.cache, cacheFrom: flags.cacheFrom ?? [], cacheTo: flags.cacheTo ?? [], registry },
        registry,
        onEvent: progress.onEvent,
      });
      if (flags.json) printJson(result);
      else {
        const cached = result.steps.filter((s) => s.cache !== null).length;
        const what = result.index ? `an index of ${result.platforms!.map((p) => p.platform).join(', ')}: ${result.index.digest}` : result.imageId;
        say(`dockvm: wrote ${result.tags.join(', ') || 'the image'} to ${result.output} (${what}; ${cached}/${result.steps.length} steps from the cache, ${result.vmBoots} VM boot${result.vmBoots === 1 ? '' : 's'})`);
      }
    });
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** --build-arg K=V, or K alone: the value from the environment (left out when it has none), as Docker does. */
function buildArgs(values: readonly string[]): Record<string, string> {
  const args: Record<string, string> = {};
  for (const value of values) {
    const eq = value.indexOf('=');
    if (eq === 0) throw new UsageError(`--build-arg ${value}: the name is empty`);
    if (eq > 0) args[value.slice(0, eq)] = value.slice(eq + 1);
    else if (process.env[value] !== undefined) args[value] = process.env[value]!;
  }
  return args;
}

function pairs(values: readonly string[], flag: string): Record<string, string> {
  const result: Record<string, string> = {};
  for (const value of values) {
    const eq = value.indexOf('=');
    if (eq <= 0 || eq === value.length - 1) throw new UsageError(`${flag} ${value}: write it as NAME=IMAGE`);
    result[value.slice(0, eq)] = value.slice(eq + 1);
  }
  return result;
}

/** --secret id=ID,src=PATH (Docker's and buildah's form; source= and type=file too). */
function secrets(values: readonly string[]): Record<string, string> {
  const result: Record<string, string> = {};
  for (const value of values) {
    const fields: Record<string, string> = {};
    for (const part of value.split(',')) {
      const eq = part.indexOf('=');
      if (eq <= 0) throw new UsageError(`--secret ${value}: "${part}" is not KEY=VALUE; write id=ID,src=PATH`);
      fields[part.slice(0, eq).toLowerCase()] = part.slice(eq + 1);
    }
    const { id, src, source, type, ...rest } = fields;
    const path = src ?? source;
    const unknown = Object.keys(rest);
    if (unknown.length) throw new UsageError(`--secret ${value}: ${unknown.join(', ')} is not supported; write id=ID,src=PATH`);
    if (type !== undefined && type !== 'file') throw new UsageError(`--secret ${value}: type=${type} is not supported; only files (type=file)`);
    if (!id || !path) throw new UsageError(`--secret ${value}: give both id= and src=`);
    result[id] = path;
  }
  return result;
}

/** A malformed --cache-from/--cache-to is a usage error, before anything runs. */
function usage(check: () => unknown): void {
  try {
    check();
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

function nonNegativeInteger(value: string): number {
  if (!/^[0-9]+$/.test(value)) throw new UsageError(`--timestamp: "${value}" is not a number of seconds since the epoch`);
  return Number(value);
}

function positiveSeconds(value: string): number {
  if (!/^[1-9][0-9]*$/.test(value)) throw new UsageError(`--timeout: "${value}" is not a whole number of seconds`);
  return Number(value);
}

/** Aborted after `seconds` with the error the user gets (the VM's own error is replaced by it: build-vm.ts). */
function timeoutSignal(seconds: number): AbortSignal {
  const controller = new AbortController();
  setTimeout(() => controller.abort(new VmError(`the build took longer than --timeout ${seconds} s; its VM was stopped`)), seconds * 1000).unref();
  return controller.signal;
}

function positiveInteger(value: string): number {
  if (!/^[1-9][0-9]*$/.test(value)) throw new UsageError(`--memory: "${value}" is not a whole number of MiB`);
  return Number(value);
}
