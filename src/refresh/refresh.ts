// dockvm refresh: the nightly base-image refresh. For each spec: resolve its base to a digest, hash every
// other input, and compare both with SPEC.lock.json. Equal (and the output still there) → up-to-date,
// with no pull and no VM. Otherwise rebuild on exactly the resolved base, push when asked, and write the
// lock. Each spec succeeds or fails on its own; a failure leaves its lock (and output) untouched.
import { readFile, stat } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { SpecError } from '../errors.js';
import { parseImageReference } from '../image/reference.js';
import { checkSpec, type BuildSpec } from '../spec/load.js';
import { isLoopback, type Credentials, type RegistryOptions } from '../transport/registry/index.js';
import { parseDestination } from '../transport/write.js';
import type { VmBuildOptions } from '../build/vm-layer.js';
import { VERSION } from '../version.js';
import { BaseResolver, type ResolvedBase } from './base.js';
import { inputsHash } from './inputs.js';
import { LOCK_VERSION, lockPathFor, readLock, writeLock, type Lock } from './lock.js';
import { mapBounded } from './pool.js';
import { checkPushTemplate, pushRegistry, pushTarget } from './push-target.js';
import { rebuild } from './rebuild.js';
import { selectSpecs, type Shard } from './shard.js';

export type RefreshStatus = 'up-to-date' | 'rebuilt' | 'failed';

export interface RefreshResult {
  /** the spec path as given */
  spec: string;
  status: RefreshStatus;
  /** fromImage as the spec writes it; null for FROM scratch (or a spec that could not be read) */
  baseReference: string | null;
  /** what the base resolves to now (null: scratch, or not resolved because of a failure) */
  baseDigest: string | null;
  /** the base digest the lock recorded (null: no lock, or scratch) */
  previousBaseDigest: string | null;
  /** the output (absolute path, or oci:DIR) */
  output: string | null;
  /** failed: what went wrong; rebuilt: why it was rebuilt; up-to-date: null */
  reason: string | null;
  /** whether a build VM was booted */
  bootedVm: boolean;
  /** where the image was pushed, and its manifest digest */
  pushedTo: string | null;
  pushedDigest: string | null;
}

export interface RefreshOptions extends VmBuildOptions {
  /** specs refreshed at once (default 1: every rebuild with runAsRoot boots a VM) */
  jobs?: number;
  /** push every rebuilt image here: a registry reference with {name} and {tag} placeholders */
  push?: string;
  /** refresh only this shard of the (sorted) specs */
  shard?: Shard;
  /** false: allow plain HTTP to registries (loopback registries may use it anyway) */
  tlsVerify?: boolean;
  /**
   * credentials for the --push registry; also for base registries when there is no --push or the base is
   * on the same registry. Others use the auth files.
   */
  creds?: Credentials | string;
  /** the auth files to search instead of the default list */
  authFiles?: readonly string[];
  /** called as each spec finishes (results also come back in spec order) */
  onResult?: (result: RefreshResult) => void;
  /** the working directory shards are sorted relative to (default process.cwd()) */
  cwd?: string;
}

/** Refresh every spec (of this shard), `jobs` at a time. Never rejects for a spec's failure: see each status. */
export async function refresh(specPaths: readonly string[], options: RefreshOptions = {}): Promise<RefreshResult[]> {
  const specs = selectSpecs(specPaths, options.shard, options.cwd);
  if (options.push !== undefined) checkPushTemplate(options.push, specs.length);
  const context = new RefreshContext(options);
  return mapBounded(specs, options.jobs ?? 1, async (specPath) => {
    const result = await context.refreshOne(specPath);
    options.onResult?.(result);
    return result;
  });
}

class RefreshContext {
  readonly #options: RefreshOptions;
  readonly #resolver: BaseResolver;
  readonly #pushRegistry: string | null;

  constructor(options: RefreshOptions) {
    this.#options = options;
    this.#pushRegistry = options.push === undefined ? null : pushRegistry(options.push);
    this.#resolver = new BaseResolver((registry) => this.#registryOptions(registry, 'base'));
  }

  /** TLS and credentials for one registry: --creds only where it was meant to go (see RefreshOptions.creds). */
  #registryOptions(registry: string, use: 'base' | 'push'): RegistryOptions {
    const { tlsVerify, creds, authFiles } = this.#options;
    const credsHere = creds !== undefined && (use === 'push' || this.#options.push === undefined || registry === this.#pushRegistry);
    return { ...(tlsVerify !== undefined ? { tlsVerify } : {}), ...(credsHere ? { creds } : {}), ...(authFiles ? { authFiles } : {}) };
  }

  async refreshOne(specPath: string): Promise<RefreshResult> {
    const result: RefreshResult = {
      spec: specPath,
      status: 'failed',
      baseReference: null,
      baseDigest: null,
      previousBaseDigest: null,
      output: null,
      reason: null,
      bootedVm: false,
      pushedTo: null,
      pushedDigest: null,
    };
    try {
      await this.#refresh(specPath, result);
    } catch (err) {
      result.status = 'failed';
      result.reason = describeError(err);
    }
    return result;
  }

  async #refresh(specPath: string, result: RefreshResult): Promise<void> {
    const { spec, raw } = await loadSpecWithRaw(specPath);
    result.baseReference = typeof raw.fromImage === 'string' ? raw.fromImage : null;
    result.output = spec.output;
    const lockPath = lockPathFor(spec.specPath);
    const lock = await readLock(lockPath);
    result.previousBaseDigest = lock?.baseDigest ?? null;
    const [inputs, base] = await Promise.all([inputsHash(spec, raw), this.#resolver.resolve(spec)]);
    result.baseDigest = base?.digest ?? null;
    const outputName = outputRelativeTo(spec);

    const stale = await whyStale(lock, { spec, baseReference: result.baseReference, base, inputs, outputName, pushTarget: this.#pushTargetOf.bind(this) });
    if (stale === null) {
      result.status = 'up-to-date';
      return;
    }
    const rebuilt = await rebuild(spec, {
      fromImage: base?.pinned ?? null,
      ...this.#baseRegistryFor(base),
      ...(this.#options.timeoutMs !== undefined ? { timeoutMs: this.#options.timeoutMs } : {}),
      ...(this.#options.onScriptOutput ? { onScriptOutput: this.#options.onScriptOutput } : {}),
      pushTo: (name, tag) => {
        const reference = this.#pushTargetOf(name, tag);
        return reference === null ? null : { reference, options: this.#registryOptions(parseImageReference(reference).registry!, 'push') };
      },
    });
    result.bootedVm = rebuilt.build.bootedVm;
    const newLock: Lock = {
      lockVersion: LOCK_VERSION,
      baseReference: result.baseReference,
      baseDigest: base?.digest ?? null,
      inputsHash: inputs,
      output: outputName,
      outputSize: rebuilt.outputSize,
      outputSha256: rebuilt.outputSha256,
      imageName: rebuilt.build.imageName,
      imageTag: rebuilt.build.imageTag,
      configDigest: 'index' in rebuilt.build ? rebuilt.build.index.digest : rebuilt.build.configDigest,
      pushedTo: rebuilt.pushed?.reference ?? null,
      pushedDigest: rebuilt.pushed?.digest ?? null,
      dockvmVersion: VERSION,
    };
    await writeLock(lockPath, newLock);
    result.status = 'rebuilt';
    result.reason = stale;
    result.pushedTo = newLock.pushedTo;
    result.pushedDigest = newLock.pushedDigest;
  }

  #pushTargetOf(name: string, tag: string): string | null {
    return this.#options.push === undefined ? null : pushTarget(this.#options.push, name, tag);
  }

  /** The build pulls a docker:// base itself, unless that pull needs credentials or plain HTTP it cannot be given. */
  #baseRegistryFor(base: ResolvedBase | null): { baseRegistry?: RegistryOptions } {
    if (!base?.registry) return {};
    const registry = parseImageReference(base.pinned).registry!;
    const options = this.#registryOptions(registry, 'base');
    const plainHttp = options.tlsVerify === false && !isLoopback(registry);
    return options.creds !== undefined || options.authFiles !== undefined || plainHttp ? { baseRegistry: options } : {};
  }
}

interface Current {
  spec: BuildSpec;
  baseReference: string | null;
  base: ResolvedBase | null;
  inputs: string;
  outputName: string;
  pushTarget: (name: string, tag: string) => string | null;
}

/** Why the spec needs a rebuild, or null when the lock says it is up to date. */
async function whyStale(lock: Lock | null, current: Current): Promise<string | null> {
  if (lock === null) return 'no lock file yet';
  if (lock.baseReference !== current.baseReference) return `the base is now ${current.baseReference ?? 'scratch'} (was ${lock.baseReference ?? 'scratch'})`;
  const digest = current.base?.digest ?? null;
  if (lock.baseDigest !== digest) return `the base moved: ${lock.baseDigest} → ${digest}`;
  if (lock.inputsHash !== current.inputs) return 'the spec, its copyToRoot or its scripts changed';
  if (lock.output !== current.outputName) return 'the output moved';
  const missing = await outputProblem(current.spec.output, lock);
  if (missing) return missing;
  const target = current.pushTarget(lock.imageName, lock.imageTag);
  if (target !== null && lock.pushedTo !== target) return `not pushed to ${target} yet`;
  return null;
}

/** Whether the output the lock describes is still there (an archive of the recorded size). */
async function outputProblem(output: string, lock: Lock): Promise<string | null> {
  const destination = parseDestination(output);
  const path = destination.kind === 'oci' ? join(destination.dir, 'index.json') : destination.path;
  const info = await stat(path).catch(() => undefined);
  if (!info?.isFile()) return 'the output is missing';
  if (lock.outputSize !== null && info.size !== lock.outputSize) return 'the output was changed since the last refresh';
  return null;
}

/** The output as the lock records it: relative to the spec's directory, so the lock can move with the spec. */
function outputRelativeTo(spec: BuildSpec): string {
  const base = dirname(spec.specPath);
  if (spec.output.startsWith('oci:')) return `oci:${relative(base, spec.output.slice('oci:'.length))}`;
  return relative(base, spec.output);
}

/** The spec as loadSpec checks it, and the parsed file itself (what the inputs hash covers). */
async function loadSpecWithRaw(specPath: string): Promise<{ spec: BuildSpec; raw: Record<string, unknown> }> {
  let text: string;
  try {
    text = await readFile(specPath, 'utf8');
  } catch (err) {
    throw new SpecError(`cannot read spec ${specPath}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, [], { source: specPath, cause: err });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new SpecError(`spec ${specPath} is not valid JSON: ${(err as Error).message}`, [], { source: specPath, cause: err });
  }
  const spec = checkSpec(raw, resolve(specPath));
  return { spec, raw: raw as Record<string, unknown> };
}

/** The error's message, with a spec's problems after it. */
function describeError(err: unknown): string {
  if (err instanceof SpecError && err.problems.length > 0) return `${err.message} ${err.problems.join('; ')}`;
  return err instanceof Error ? err.message : String(err);
}
