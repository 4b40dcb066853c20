// The build plan: what a front end (a Containerfile, a spec.json) turns into, and what the executor
// runs. It is plain data (JSON-serialisable, no functions, no class instances) so the build cache can
// hash a step and tests can snapshot a plan. Front ends never touch the VM; the executor never parses.
//
// A plan is stages of steps. A step either makes a layer (RUN, COPY/ADD, WORKDIR's mkdir; spec.json's
// copyToRoot + runAsRoot + extraCommands step) or only edits the image config
// (ENV, LABEL, CMD, …). Every step carries its image history entry (`createdBy`, as BuildKit writes it)
// and the text its cache key hashes. Everything a step needs is resolved: variables expanded, paths
// made absolute, context files selected, the config it runs under (env, user, workdir) spelled out.
import type { ContainerConfig, Platform } from '../image/config.js';

export const PLAN_VERSION = 1;

export interface Plan {
  version: typeof PLAN_VERSION;
  /** the Containerfile (or spec) the plan came from, for messages */
  source: string;
  /** the build context: where context-relative paths in the plan point, and what .dockerignore keeps out */
  context: BuildContext;
  /**
   * The stages the target needs, in file order (a stage always comes after the stages it reads from).
   * Stages the target does not reach are left out, as BuildKit leaves them unbuilt.
   */
  stages: Stage[];
  /** position in `stages` of the stage whose image is the result (the last one) */
  target: number;
  /** things worth telling the user that do not stop the build (a --build-arg no ARG declares) */
  warnings: string[];
}

export interface BuildContext {
  /** absolute path of the context directory */
  dir: string;
  /** .dockerignore patterns in file order (`!` exceptions kept); empty when there is none */
  ignore: string[];
}

export interface Stage {
  /** position of this stage in the Containerfile (0-based), as `--from=N` counts */
  index: number;
  /** `AS name`, lowercased as Docker compares it */
  name?: string;
  /** 1-based line of its FROM */
  line: number;
  base: StageBase;
  /** the platform the stage is built for (its binaries, its VM) */
  platform: Platform;
  /**
   * The config the stage starts from: the base image's (or base stage's) config with, as BuildKit
   * does at FROM, its OnBuild triggers consumed (they are this stage's first steps) and PATH defaulted
   * in Env. Applying the steps' changes to it in order gives `config`.
   */
  baseConfig: ContainerConfig;
  steps: Step[];
  /** the config after every step: what the image's `config` holds (Docker's field names) */
  config: ContainerConfig;
  /** the image's top-level `author` (MAINTAINER), when set here or inherited */
  author?: string;
  /**
   * How the image config is written: as BuildKit writes a Dockerfile's (the default), or as dockvm's
   * buildImage has always written a spec's (its own key order, history entries without a comment), so
   * that a spec gives the bytes it gave before it became a plan.
   */
  configStyle?: 'buildkit' | 'nixpkgs';
}

export type StageBase =
  | { kind: 'scratch' }
  /** an image, as a dockvm IMAGE reference (plain FROM references are written docker://…) */
  | { kind: 'image'; ref: string }
  /** an earlier stage of this plan, by its position in `Plan.stages` */
  | { kind: 'stage'; stage: number };

/** Where a step came from, so executor errors can name the line. */
export interface StepLocation {
  file: string;
  /** 1-based first line of the instruction */
  line: number;
}

interface StepCommon {
  location: StepLocation;
  /** the image history entry's `created_by`, exactly as BuildKit writes it; null: no entry (ONBUILD) */
  createdBy: string | null;
  /** true when the step adds no layer (history `empty_layer`) */
  emptyLayer: boolean;
  /**
   * The instruction as written, after variable expansion (flags included): readable, for messages and
   * a cache listing. The cache key should hash `stepCacheInput(step)`, which covers everything the step
   * does (this text included), besides the parent chain, input hashes, platform and guest version.
   */
  cacheText: string;
}

export type Step = RunStep | CopyStep | WorkdirStep | RootStep | ConfigStep;
export type LayerStep = RunStep | CopyStep | WorkdirStep | RootStep;

/** RUN: a command run in the VM over the stage's filesystem; what it changes becomes one layer. */
export interface RunStep extends StepCommon {
  kind: 'run';
  /** the process's argv: SHELL (default ["/bin/sh","-c"]) + the command for shell form, as written for exec form */
  argv: string[];
  /** the process environment, NAME=value: the config's Env, then the ARGs in scope (not in the image config) */
  env: string[];
  /**
   * HTTP_PROXY and its kin given as build args: added to the process environment but, as in Docker,
   * left out of the history and of the cache key (a proxy does not change what a step makes)
   */
  proxyEnv: string[];
  /** "" = root; otherwise `user[:group]` (names are looked up in the stage's /etc/passwd, /etc/group) */
  user: string;
  /** absolute working directory (created when missing, as Docker does) */
  workdir: string;
  mounts: RunMount[];
  network: 'default' | 'none';
  /** files the command reads that are not in the layer: a heredoc with a shebang, run as a file */
  inlineFiles: InlineFile[];
}

/** A file made from text in the Containerfile (a heredoc), never part of the build context. */
export interface InlineFile {
  /** RUN: the absolute path it is mounted at (under /dev/pipes/, outside the layer); COPY/ADD: its name (the delimiter), as a source named that */
  path: string;
  data: string;
  mode: number;
}

/** The thing a COPY --from, a bind mount's from= or a cache mount's from= reads. */
export type FileSource =
  | { kind: 'context' }
  | { kind: 'stage'; stage: number }
  | { kind: 'image'; ref: string };

export type RunMount =
  | {
      type: 'bind';
      target: string;
      /** path in `from` (context-relative for the context, absolute otherwise) */
      source: string;
      from: FileSource;
      /** rw: writes are allowed and thrown away */
      readwrite: boolean;
    }
  | {
      type: 'cache';
      target: string;
      /** the cache's identity: `id=`, else the target path */
      id: string;
      sharing: 'shared' | 'private' | 'locked';
      readonly: boolean;
      /** seed contents: a path in `from`, when from= is given */
      from?: FileSource;
      source?: string;
      mode: number;
      uid: number;
      gid: number;
    }
  | { type: 'tmpfs'; target: string; /** bytes; 0 = the kernel's default */ size: number }
  | {
      type: 'secret';
      id: string;
      /** where the file appears; undefined when only `env=` is asked */
      target?: string;
      /** an environment variable that receives the secret's value */
      env?: string;
      required: boolean;
      mode: number;
      uid: number;
      gid: number;
    };

/**
 * COPY and ADD. Sources are resolved: for the context, `entries` lists every file, directory and
 * symlink the step copies (after .dockerignore), each with where it lands. For another stage or an
 * image, `patterns` are matched by the executor in that filesystem with the same rules.
 */
export interface CopyStep extends StepCommon {
  kind: 'copy';
  instruction: 'COPY' | 'ADD';
  from: FileSource;
  /** the source arguments after expansion, as written (context-relative or, for --from, absolute) */
  patterns: string[];
  /** context only: what the patterns select, parents before children */
  entries: CopyEntry[];
  /** COPY/ADD <<EOF heredocs, made into files (name = the delimiter) */
  inlineFiles: InlineFile[];
  /** ADD only: URLs downloaded on the host */
  urls: UrlSource[];
  /** absolute destination; a trailing "/" means a directory */
  dest: string;
  /**
   * true when the destination must be a directory (it ends with "/", or there are several sources or
   * a wildcard). When false and the one source is a file, `dest` is the file's path, unless `dest`
   * is an existing directory in the stage, where the file goes inside it (Docker's rule).
   */
  destIsDir: boolean;
  /** --chown as written after expansion ("user", "user:group", "1000:1000"); names resolve in the stage */
  chown?: string;
  /** --chmod as a mode (octal in the Containerfile) */
  chmod?: number;
  /** --link: accepted; the layer is the same */
  link: boolean;
  /** ADD: a named local tar archive (plain, gzip, bzip2, xz; found by content, not name) is unpacked at dest */
  unpack: boolean;
}

/** One file, directory or symlink a context COPY picks. */
export interface CopyEntry {
  /** path relative to the context root */
  source: string;
  /** path relative to `dest`: "" for `dest` itself (the source directory's own metadata, or the single file) */
  target: string;
  type: 'file' | 'directory' | 'symlink';
  /**
   * true for what a source argument named itself (after following a symlink it names), false for what
   * lies inside a named directory. ADD unpacks named archives only.
   */
  named: boolean;
}

export interface UrlSource {
  url: string;
  /** `--checksum=sha256:…`: the download must hash to it */
  checksum?: string;
  /** the file name under a directory destination: the URL path's last component */
  filename: string;
  /** ADD --unpack=true: unpack the download when it is an archive (off by default for URLs) */
  unpack: boolean;
}

/**
 * WORKDIR: sets WorkingDir and creates the directory (with parents, 0755, owned by the config's user),
 * which BuildKit commits as a layer (`created_by` "WORKDIR /x", without "# buildkit"). For "/" nothing
 * is created and `emptyLayer` is true.
 */
export interface WorkdirStep extends StepCommon {
  kind: 'workdir';
  path: string;
  /** the USER in force: owner of the directories it creates */
  user: string;
  change: ConfigChange & { op: 'workdir' };
}

/**
 * spec.json's one step, nixpkgs buildImage's: copyToRoot unpacked over the base, the runAsRoot script run
 * as root (a bash script: src/build/interpreter.ts), extraCommands run in the new layer's root; what they
 * change is one layer. Without runAsRoot nothing needs root, and the layer is made on the host. It is its
 * stage's only layer step (copyToRoot is unpacked as the VM mounts the base).
 */
export interface RootStep extends StepCommon {
  kind: 'root';
  /** the copyToRoot tar, each entry at the path it lands on over the base (src/build/copy-over-base.ts); null: none */
  copyTar: string | null;
  /** copyToRoot's sources (absolute host paths, later ones winning): what the key hashes */
  copyToRoot: string[];
  /** owner of the copied files */
  uid: number;
  gid: number;
  keepContentsDirlinks: boolean;
  /** null: no script (no VM) */
  runAsRoot: string | null;
  extraCommands: string;
  /** the script's environment, NAME=value (src/build/config.ts scriptEnvironment) */
  env: string[];
  /** outbound network for the script (QEMU user-mode networking) */
  network: boolean;
  /** MiB the new layer may take (spec.json's diskSize: the scratch disk is twice that, sparse) */
  diskSize: number;
  /** MiB of build VM memory */
  buildVMMemorySize: number;
  /** false: the layer differs on every build (created "now"), so the cache is neither asked nor filled */
  cacheable: boolean;
}

/** An instruction that only edits the image config (and writes an empty_layer history entry). */
export interface ConfigStep extends StepCommon {
  kind: 'config';
  instruction: ConfigInstruction;
  change: ConfigChange;
}

export type ConfigInstruction =
  | 'ENV'
  | 'ARG'
  | 'LABEL'
  | 'MAINTAINER'
  | 'USER'
  | 'EXPOSE'
  | 'VOLUME'
  | 'ENTRYPOINT'
  | 'CMD'
  | 'SHELL'
  | 'STOPSIGNAL'
  | 'HEALTHCHECK'
  | 'ONBUILD';

/** A change to the image config as Docker makes it; applied by `applyConfigChange` (config-change.ts). */
export type ConfigChange =
  | { op: 'env'; vars: [name: string, value: string][] }
  /** ARG: no config change, only a history entry */
  | { op: 'none' }
  | { op: 'labels'; labels: [key: string, value: string][] }
  | { op: 'author'; author: string }
  | { op: 'user'; user: string }
  | { op: 'workdir'; path: string }
  /** ports as Docker keys them: "80/tcp" */
  | { op: 'expose'; ports: string[] }
  | { op: 'volumes'; paths: string[] }
  /** argv with the SHELL already prepended for shell form; `resetCmd`: ENTRYPOINT clears an inherited CMD */
  | { op: 'entrypoint'; argv: string[]; resetCmd: boolean }
  | { op: 'cmd'; argv: string[] }
  | { op: 'shell'; argv: string[] }
  | { op: 'stopsignal'; signal: string }
  | { op: 'healthcheck'; healthcheck: Healthcheck }
  | { op: 'onbuild'; trigger: string };

/** Docker's HealthcheckConfig: durations in nanoseconds, zero fields left out as Docker leaves them. */
export interface Healthcheck {
  /** ["NONE"], ["CMD", …] or ["CMD-SHELL", "cmd"] */
  Test: string[];
  Interval?: number;
  Timeout?: number;
  StartPeriod?: number;
  StartInterval?: number;
  Retries?: number;
}

/**
 * What a step's cache key hashes besides its parent chain, its input files' hashes, the platform and
 * the guest's version: the step without where it was written (moving a line does not change a layer)
 * and without proxy settings (as Docker leaves them out), as canonical JSON.
 */
export function stepCacheInput(step: Step): string {
  const { location: _location, ...rest } = step;
  const data: Record<string, unknown> = { ...rest };
  if (step.kind === 'run') delete data.proxyEnv;
  return canonicalJson(data);
}

/** JSON with object keys sorted, so equal data gives equal text. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v,
  );
}
