// The executor: a Plan (src/plan/plan.ts) made into images, stage by stage (DESIGN.md "Two front ends,
// one executor"). Per stage: the base (an image, an earlier stage's image, or scratch); each layer step's
// cache key (the parent's key, the step as planned, the hash of its input files, the network, the
// platform, the mtime clamp, the guest's version); the steps up to the first miss reuse cached layers
// without a VM; the rest of the stage runs in one boot (stage-vm.ts), each step its own layer, each new
// layer stored in the cache. Config-only steps are already applied to the stage's config by the planner;
// they add history entries. spec.json's one step (a RootStep) is keyed as run-as-root has always keyed it
// (root-step.ts) and runs in the same stage VM, or on the host when it has no runAsRoot. A RUN's cache
// mounts start from what earlier builds kept (src/cache/cache-mounts.ts) and are kept again after the
// stage's VM, outside every layer and key. The executor never parses a Containerfile or a spec.
import { createReadStream } from 'node:fs';
import { link, mkdir } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { join, posix } from 'node:path';
import type { ImageConfig, Platform } from '../image/config.js';
import { formatPlatform } from '../image/platform.js';
import { sha256, type Digest } from '../image/digest.js';
import { FileLayer } from '../image/file-layer.js';
import type { Image, Layer } from '../image/image.js';
import { PlatformError } from '../errors.js';
import { ARCHITECTURE_NAMES, ARCHITECTURES, architectureRow, defaultArchitecture, type Architecture } from '../vm/architectures.js';
import { describePlatform, guestPlatform, guestRowFor, requireGuestPieces } from '../vm/guest-platform.js';
import { BuildCache, type CacheHit } from '../cache/build-cache.js';
import { canonicalJson } from '../cache/canonical-json.js';
import { guestVersion } from '../cache/guest-version.js';
import { stepKey } from '../cache/key.js';
import { CacheMountStore, type CacheMountLock } from '../cache/cache-mounts.js';
import { stepCacheInput, type CopyStep, type FileSource, type LayerStep, type Plan, type RootStep, type RunStep, type Stage, type Step } from '../plan/plan.js';
import { buildLayerOnHost } from '../build/host-layer.js';
import { rootChangeWarning } from '../build/root-change.js';
import { BuildContextReader } from '../frontend/containerfile/context.js';
import { ignoreMatcher } from '../frontend/containerfile/dockerignore.js';
import { contextItem, copyItems, copyLayout, selectInTree, treeItems, type CopyItem, type CopyLayout, type CopySources } from './copy-items.js';
import { writeItemsTar } from './copy-input.js';
import { download, type Download } from './downloads.js';
import { BuildStepError, notSupported, stepError } from './errors.js';
import type { BuildEvent, BuildEventSink } from './events.js';
import { nixpkgsImageConfig, stageImageConfig } from './image-config.js';
import type { ImageSource } from './image-source.js';
import { ImageTree } from './image-tree.js';
import { InputsDisk, type InputRange } from './inputs-disk.js';
import { rootStepKey } from './root-step.js';
import { buildStageInVm, type VmJob } from './stage-vm.js';
import { timePhase } from '../timing.js';

export interface ExecuteOptions {
  /** the images the plan names (run-as-root: its base, opened already) */
  images: Pick<ImageSource, 'open'>;
  cache: BuildCache;
  /** the build's temp dir: layer files live there until the output is written */
  tmp: string;
  /** no mtime in a layer is later than this (seconds) */
  clampMtime: number;
  /** the config's and history's `created` */
  created: string;
  /** --network=none takes the network from every step */
  network?: 'default' | 'none';
  /** --secret id → host file */
  secrets?: ReadonlyMap<string, string>;
  /** where RUN --mount=type=cache content is kept between builds (default: CACHE/cache-mounts) */
  cacheMounts?: CacheMountStore;
  /** build VM memory (MiB, default 1024) */
  memoryMiB?: number;
  /** scratch disk (MiB, sparse; default 8192): every step's changes and the cache mounts */
  diskMiB?: number;
  signal?: AbortSignal;
  onEvent?: BuildEventSink;
}

export interface StepReport {
  /** position of the stage in plan.stages */
  stage: number;
  /** "[build 2/4] RUN make" */
  name: string;
  /** null: a step the cache does not keep (spec.json's without runAsRoot, or with created "now") */
  key: Digest | null;
  diffId: Digest;
  /** where its layer came from: "local", "docker://REG/REPO", or null when it was built now */
  cache: string | null;
}

export interface ExecuteResult {
  /** the target stage's image (its layers are files in `tmp`, or in the cache) */
  image: Image;
  steps: StepReport[];
  /** how many times a build VM was booted */
  vmBoots: number;
}

const DEFAULT_MEMORY_MIB = 1024;
const DEFAULT_DISK_MIB = 8192;

/** A cache mount's directory on the scratch disk, shared by the stage's steps that mount its id. */
const cacheDirOf = (id: string) => `/build/scratch/caches/${sha256(id).slice(7, 23)}`;

/** Where a secret mount's file appears when the mount names no target (BuildKit's default). */
const secretTarget = (id: string) => `/run/secrets/${id}`;

export async function executePlan(plan: Plan, options: ExecuteOptions): Promise<ExecuteResult> {
  const run = new PlanRun(plan, options);
  try {
    return await run.execute();
  } finally {
    run.close();
  }
}

interface StageImage {
  image: Image;
}

/** A layer step prepared on the host: its key and what it needs if it is built. */
interface Prepared {
  step: LayerStep;
  /** index of the step in the stage (for the vertex label) */
  position: number;
  /** null: not cached (see StepReport.key) */
  key: Digest | null;
  name: string;
  /** COPY/ADD: what it copies (built again onto the inputs disk when the step must run) */
  copy?: { sources: CopySources; layout: CopyLayout };
  network: 'default' | 'none';
}

class PlanRun {
  readonly #results: StageImage[] = [];
  readonly #trees = new Map<string, Promise<ImageTree>>();
  readonly #reports: StepReport[] = [];
  #vertex = 0;
  #boots = 0;
  #downloads = 0;
  #cacheMountStore: CacheMountStore | undefined;
  /** guestVersion() per architecture: each has its own guest */
  #guest = new Map<Architecture, Promise<string>>();

  constructor(
    readonly plan: Plan,
    readonly options: ExecuteOptions,
  ) {}

  async execute(): Promise<ExecuteResult> {
    for (const [index, stage] of this.plan.stages.entries()) this.#results.push(await this.stage(index, stage));
    return { image: this.#results[this.plan.target]!.image, steps: this.#reports, vmBoots: this.#boots };
  }

  close(): void {
    for (const tree of this.#trees.values()) void tree.then((t) => t.close(), () => undefined);
  }

  #emit(event: BuildEvent): void | Promise<void> {
    return this.options.onEvent?.(event);
  }

  #label(stage: Stage): string {
    if (this.plan.stages.length === 1) return '';
    return `${stage.name ?? `stage-${stage.index}`} `;
  }

  async stage(index: number, stage: Stage): Promise<StageImage> {
    const label = this.#label(stage);
    const total = 1 + stage.steps.filter((s) => s.kind !== 'config').length;
    const base = await this.#base(stage);
    const fromId = ++this.#vertex;
    this.#emit({ type: 'vertex', id: fromId, name: `[${label}1/${total}] FROM ${describeBase(this.plan, stage)}` });
    this.#emit({ type: 'done', id: fromId, seconds: 0 });

    const platform = `${stage.platform.os}/${stage.platform.architecture}${stage.platform.variant ? `/${stage.platform.variant}` : ''}`;
    let parent: Digest | { baseDiffIds: readonly Digest[] } = { baseDiffIds: base.layers.map((l) => l.diffId) };
    const prepared: Prepared[] = [];
    // steps that make no layer (WORKDIR /): shown, in their place, when the steps before them are
    const empty: { position: number; name: string }[] = [];
    const showEmptyBefore = (position: number) => {
      while (empty.length > 0 && empty[0]!.position < position) {
        const id = ++this.#vertex;
        this.#emit({ type: 'vertex', id, name: empty.shift()!.name });
        this.#emit({ type: 'done', id, seconds: 0 });
      }
    };
    let position = 1;
    for (const step of stage.steps) {
      if (step.kind === 'config') continue;
      position++;
      const name = `[${label}${position}/${total}] ${describeStep(step)}`;
      if (step.emptyLayer) {
        empty.push({ position, name });
        continue;
      }
      const item = await this.#prepare(step as LayerStep, parent, stage.platform, platform, name, position);
      prepared.push(item);
      parent = item.key ?? parent;
    }

    // The steps up to the first miss come from the cache, without a VM.
    const layers: Layer[] = [...base.layers];
    let firstMiss = prepared.length;
    for (const [i, item] of prepared.entries()) {
      const hit = item.key === null ? undefined : await this.options.cache.lookup(item.key);
      if (!hit) {
        firstMiss = i;
        break;
      }
      showEmptyBefore(item.position);
      const id = ++this.#vertex;
      this.#emit({ type: 'vertex', id, name: item.name });
      this.#emit({ type: 'cached', id });
      layers.push(await this.#held(hit, `cached-${hex12(item.key!)}.tar`));
      this.#reports.push({ stage: index, name: item.name, key: item.key, diffId: hit.entry.diffId, cache: hit.source });
    }

    const missing = prepared.slice(firstMiss);
    const onHost = missing.length === 1 && missing[0]!.step.kind === 'root' && missing[0]!.step.runAsRoot === null;
    if (onHost) layers.push(await this.#buildOnHost(index, missing[0]!));
    else if (missing.length > 0) {
      // a cache mount's lock is held from before the VM starts until its content is kept again
      const locks: CacheMountLock[] = [];
      try {
        layers.push(...(await this.#buildInVm(index, stage, missing, layers, platform, showEmptyBefore, locks)));
      } finally {
        for (const lock of locks) await lock.release();
      }
    }
    showEmptyBefore(Infinity);

    const diffIds = layers.map((l) => l.diffId);
    const config = stage.configStyle === 'nixpkgs' ? nixpkgsImageConfig(stage, base.config, diffIds, this.options.created) : stageImageConfig(stage, base.config, diffIds, this.options.created);
    const rawConfig = Buffer.from(JSON.stringify(config));
    return { image: { rawConfig, config, configDigest: sha256(rawConfig), layers, repoTags: [] } };
  }

  async #base(stage: Stage): Promise<{ layers: readonly Layer[]; config: ImageConfig | undefined }> {
    switch (stage.base.kind) {
      case 'scratch':
        return { layers: [], config: undefined };
      case 'stage': {
        const { image } = this.#results[stage.base.stage]!;
        return { layers: image.layers, config: image.config };
      }
      case 'image': {
        const image = await this.options.images.open(stage.base.ref, stage.platform);
        return { layers: image.layers, config: image.config };
      }
    }
  }

  /** The guest version of the VM a stage of `architecture` runs in (the host's for one dockvm has no VM for: nothing is built then). */
  #guestVersion(architecture: string): Promise<string> {
    const row = architectureRow(architecture)?.architecture ?? defaultArchitecture().architecture;
    let version = this.#guest.get(row);
    if (version === undefined) this.#guest.set(row, (version = guestVersion(process.env, row)));
    return version;
  }

  /** A layer step's key, and for COPY/ADD its sources and layout. */
  async #prepare(step: LayerStep, parent: Digest | { baseDiffIds: readonly Digest[] }, stagePlatform: Platform, platform: string, name: string, position: number): Promise<Prepared> {
    const architecture = stagePlatform.architecture;
    if (step.kind === 'root') return this.#prepareRoot(step, parent, platform, architecture, name, position);
    const network = step.kind === 'run' && this.options.network !== 'none' ? step.network : 'none';
    const inputs: Record<string, Digest> = {};
    let copy: Prepared['copy'];
    if (step.kind === 'copy') {
      copy = await this.#copySources(step, stagePlatform);
      if (step.from.kind === 'context') {
        // the files as the layer would get them: changed content, mode or name changes the key
        inputs.files = (await writeItemsTar(copyItems(step, copy.sources, copy.layout), { ...chmodOf(step), clampMtime: this.options.clampMtime })).digest;
      } else {
        inputs.from = await this.#sourceDigest(step.from, stagePlatform);
      }
    }
    if (step.kind === 'run') {
      this.#checkRun(step);
      for (const [i, mount] of step.mounts.entries()) {
        if (mount.type === 'bind') inputs[`bind${i}`] = await this.#bindDigest(mount.from, mount.source, step, stagePlatform);
        // what seeds a cache mount is an input of the step, as a mount's from= is in BuildKit
        if (mount.type === 'cache' && mount.from) inputs[`cache${i}`] = await this.#bindDigest(mount.from, mount.source ?? '/', step, stagePlatform);
      }
    }
    const key = stepKey({
      parent,
      instruction: stepCacheInput(step),
      inputs,
      network,
      options: { clampMtime: this.options.clampMtime },
      platform,
      guest: await this.#guestVersion(architecture),
    });
    return { step, position, key, name, network, ...(copy ? { copy } : {}) };
  }

  /** spec.json's step: its key, unless nothing of it is cached (no runAsRoot: no VM to spare; created "now") */
  async #prepareRoot(step: RootStep, parent: Digest | { baseDiffIds: readonly Digest[] }, platform: string, architecture: string, name: string, position: number): Promise<Prepared> {
    if (typeof parent === 'string') throw new Error('a plan\'s root step must be its stage\'s first layer step');
    const cached = step.runAsRoot !== null && step.cacheable;
    const key = cached ? await rootStepKey(step, parent.baseDiffIds, this.options.clampMtime, platform, await this.#guestVersion(architecture)) : null;
    return { step, position, key, name, network: step.network ? 'default' : 'none' };
  }

  /** spec.json's step without runAsRoot: copyToRoot and extraCommands need no root, so no VM. */
  async #buildOnHost(index: number, item: Prepared): Promise<Layer> {
    const step = item.step as RootStep;
    const stageTmp = join(this.options.tmp, `stage-${index}`);
    await mkdir(stageTmp, { recursive: true });
    const id = ++this.#vertex;
    const started = Date.now();
    this.#emit({ type: 'vertex', id, name: item.name });
    const file = await buildLayerOnHost(step, step.copyTar ?? undefined, stageTmp, this.options.clampMtime);
    this.#emit({ type: 'done', id, seconds: (Date.now() - started) / 1000 });
    this.#reports.push({ stage: index, name: item.name, key: null, diffId: file.diffId, cache: null });
    return new FileLayer(file.path, file.diffId, file.size, true);
  }

  async #copySources(step: CopyStep, platform: Platform): Promise<{ sources: CopySources; layout: CopyLayout }> {
    const downloads: Download[] = [];
    for (const url of step.urls) downloads.push(await this.#download(step, url));
    const sources: CopySources = { contextDir: this.plan.context.dir, downloads, ...(step.from.kind !== 'context' ? { tree: await this.#tree(step.from, platform) } : {}) };
    try {
      return { sources, layout: await copyLayout(step, sources) };
    } catch (err) {
      throw located(step, err);
    }
  }

  async #download(step: CopyStep, url: CopyStep['urls'][number]): Promise<Download> {
    try {
      return await download(url, this.options.tmp, this.#downloads++);
    } catch (err) {
      throw located(step, err);
    }
  }

  /** The merged filesystem of the stage or image a --from or from= names (an image: for the stage's platform), indexed once per build. */
  #tree(from: FileSource, platform: Platform): Promise<ImageTree> {
    const key = from.kind === 'stage' ? `stage:${from.stage}` : from.kind === 'image' ? `image:${formatPlatform(platform)}:${from.ref}` : 'context';
    let tree = this.#trees.get(key);
    if (!tree) {
      tree = (async () => {
        const image = await this.#sourceImage(from, platform);
        return ImageTree.open(image, key, this.options.tmp);
      })();
      this.#trees.set(key, tree);
    }
    return tree;
  }

  /** A stage's image, or an image opened for the platform of the stage that reads it (an index's entry of that platform). */
  async #sourceImage(from: FileSource, platform: Platform): Promise<Image> {
    if (from.kind === 'stage') return this.#results[from.stage]!.image;
    if (from.kind === 'image') return this.options.images.open(from.ref, platform);
    throw new Error('the context is not an image');
  }

  /** A --from source's identity for the key: its layers (the patterns are in the step itself). */
  async #sourceDigest(from: FileSource, platform: Platform): Promise<Digest> {
    const image = await this.#sourceImage(from, platform);
    return sha256(canonicalJson(image.layers.map((l) => l.diffId)));
  }

  async #bindDigest(from: FileSource, source: string, step: RunStep, platform: Platform): Promise<Digest> {
    if (from.kind !== 'context') return this.#sourceDigest(from, platform);
    return (await writeItemsTar(await this.#bindItems(from, source, step, platform), { clampMtime: this.options.clampMtime })).digest;
  }

  /** A bind mount's source as items: a directory's contents (and its own metadata), or one file. */
  async #bindItems(from: FileSource, source: string, step: RunStep, platform: Platform): Promise<AsyncIterable<CopyItem>> {
    if (from.kind === 'context') {
      const reader = new BuildContextReader(this.plan.context.dir, ignoreMatcher(this.plan.context.ignore));
      let selection;
      try {
        selection = await reader.select([source], () => false);
      } catch (err) {
        throw stepError(step.location, describeStep(step), `--mount=type=bind,source=${source}: ${(err as Error).message}`);
      }
      const dir = this.plan.context.dir;
      return (async function* () {
        for (const entry of selection.entries) yield await contextItem(join(dir, entry.source), entry.target === '' && entry.type !== 'directory' ? posix.basename(entry.source) : entry.target);
      })();
    }
    const tree = await this.#tree(from, platform);
    const request = { patterns: [posix.join('/', source)], label: `RUN --mount=type=bind,from=…,source=${source}` };
    const [match] = selectInTree(tree, request);
    const single = match && !tree.isDirectory(match.real) ? posix.basename(match.real) : undefined;
    const items = treeItems(tree, request, single === undefined ? { rootMetadata: true } : { single, rootMetadata: false });
    return (async function* () {
      yield* items;
    })();
  }

  /** A bind mount's (or a cache seed's) source as one tar on the inputs disk; its items, for the caller to look at. */
  async #appendBindItems(inputs: InputsDisk, from: FileSource, source: string, step: RunStep, platform: Platform): Promise<{ range: InputRange; items: CopyItem[] }> {
    const items: CopyItem[] = [];
    for await (const item of await this.#bindItems(from, source, step, platform)) items.push(item);
    const range = await inputs.append((sink) => writeItemsTar(listOf(items), { clampMtime: this.options.clampMtime, sink }));
    return { range, items };
  }

  /**
   * What a stage's first step that mounts cache `id` finds there: what an earlier build kept, else (nothing
   * kept, or sharing=private found it in use) its seed, from=…,source=…, else nothing. A seeded cache is kept
   * per content of its seed, as BuildKit keys it by id and the from= ref.
   */
  async #cacheContent(id: string, use: CacheMountUse, step: RunStep, stagePlatform: Platform, platform: string, locks: CacheMountLock[], inputs: InputsDisk): Promise<InputRange | undefined> {
    const { seed } = use;
    if (seed) use.storeId = `${id}:${await this.#bindDigest(seed.from, seed.source, step, stagePlatform)}`;
    const stored = await this.#openCacheMount(id, use, platform, locks);
    if (stored !== undefined) return inputs.append((sink) => pipeline(createReadStream(stored), sink));
    if (seed) return (await this.#appendBindItems(inputs, seed.from, seed.source, step, stagePlatform)).range;
    return undefined;
  }

  /** What a RUN asks that is not built yet: refused by name. */
  #checkRun(step: RunStep): void {
    const text = describeStep(step);
    for (const mount of step.mounts) {
      if (mount.type === 'secret' && !this.options.secrets?.has(mount.id) && mount.required) {
        throw stepError(step.location, text, `--mount=type=secret,id=${mount.id} needs the secret: pass --secret id=${mount.id},src=PATH`);
      }
      for (const field of [mount.target ?? '', mount.type === 'bind' ? mount.source : '']) {
        if (/[\t\n]/.test(field)) throw stepError(step.location, text, `a mount path with a tab or newline in it is not supported: ${JSON.stringify(field)}`);
      }
    }
  }

  /** A cache hit's layer, hard-linked into the build's temp dir where it can be (a prune meanwhile cannot take it away). */
  async #held(hit: CacheHit, name: string): Promise<FileLayer> {
    let path = hit.path;
    try {
      await link(hit.path, join(this.options.tmp, name));
      path = join(this.options.tmp, name);
    } catch {
      // another filesystem: use the cached file itself
    }
    return new FileLayer(path, hit.entry.diffId, hit.entry.size);
  }

  /** `locks`: the cache mount locks the stage takes, for the caller to release once it returns */
  async #buildInVm(index: number, stage: Stage, missing: Prepared[], lowers: readonly Layer[], platform: string, showEmptyBefore: (position: number) => void, locks: CacheMountLock[]): Promise<Layer[]> {
    const first = missing[0]!;
    // the stage runs in a VM of its platform (an arm64 stage in an emulated arm64 machine on an amd64 host)
    let architecture: Architecture;
    try {
      architecture = guestRowFor(stage.platform, platform).architecture;
    } catch (err) {
      if (!(err instanceof PlatformError)) throw err;
      const known = ARCHITECTURE_NAMES.map((name) => describePlatform(guestPlatform(ARCHITECTURES[name]))).join(', ');
      throw notSupported(first.step.location, describeStep(first.step), `building ${platform} steps (dockvm has build VMs for ${known})`);
    }
    await requireGuestPieces(ARCHITECTURES[architecture]);
    const tmp = this.options.tmp;
    const stageTmp = join(tmp, `stage-${index}`);
    await mkdir(stageTmp, { recursive: true });
    const inputs = new InputsDisk(join(stageTmp, 'inputs.disk'));
    const jobs: VmJob[] = [];
    let unpackCount = 0;
    const caches = cacheMountUses(missing, (step, id) => notSupported(step.location, describeStep(step), `cache mount id=${id} with another from= or source= than an earlier step of the stage gives it`));
    for (const item of missing) {
      const { step } = item;
      const text = describeStep(step);
      if (step.kind === 'copy') {
        const { sources, layout } = item.copy!;
        const range = await inputs.append((sink) => writeItemsTar(copyItems(step, sources, layout), { ...chmodOf(step), clampMtime: this.options.clampMtime, sink }));
        jobs.push({ kind: 'copy', step, text, range, layout });
      } else if (step.kind === 'workdir') {
        jobs.push({ kind: 'workdir', step, text });
      } else if (step.kind === 'root') {
        jobs.push({ kind: 'root', step, text });
      } else {
        const lines: string[] = [];
        const secrets = new Map<string, string>();
        const unpack: { dir: string; range: { offset: number; size: number } }[] = [];
        for (const mount of step.mounts) {
          switch (mount.type) {
            case 'cache': {
              const use = caches.get(mount.id)!;
              if (!use.opened) {
                // before the first step that mounts it: its content, unpacked where the steps mount it
                use.opened = true;
                const range = await this.#cacheContent(mount.id, use, step, stage.platform, platform, locks, inputs);
                if (range) unpack.push({ dir: use.dir, range });
              }
              lines.push(['cache', mount.target, use.dir, mount.mode.toString(8), mount.uid, mount.gid, mount.readonly ? 'ro' : 'rw'].join('\t'));
              break;
            }
            case 'tmpfs':
              lines.push(['tmpfs', mount.target, mount.size].join('\t'));
              break;
            case 'secret': {
              const path = this.options.secrets?.get(mount.id);
              if (path === undefined) break; // not required (checked when the step was prepared)
              secrets.set(mount.id, path);
              if (mount.target !== undefined || mount.env === undefined) {
                lines.push(['secret', mount.target ?? secretTarget(mount.id), mount.id, mount.mode.toString(8), mount.uid, mount.gid].join('\t'));
              }
              if (mount.env !== undefined) lines.push(['env', mount.env, mount.id].join('\t'));
              break;
            }
            case 'bind': {
              const dir = `/build/scratch/inputs/${unpackCount++}`;
              const { range, items: collected } = await this.#appendBindItems(inputs, mount.from, mount.source, step, stage.platform);
              unpack.push({ dir, range });
              const single = collected.length === 1 && collected[0]!.entry.type !== 'directory' ? collected[0]!.target : undefined;
              lines.push(['bind', mount.target, single ? `${dir}/${single}` : dir, mount.readwrite ? 'rw' : 'ro'].join('\t'));
              break;
            }
          }
        }
        if (step.inlineFiles.length > 0) {
          const dir = `/build/scratch/inputs/${unpackCount++}`;
          const files = step.inlineFiles.map((file) => {
            const data = Buffer.from(file.data);
            return { target: posix.basename(file.path), entry: { type: 'file' as const, mode: file.mode, uid: 0, gid: 0, size: data.length, mtime: 0 }, content: () => data };
          });
          const range = await inputs.append((sink) => writeItemsTar(listOf(files), { clampMtime: this.options.clampMtime, sink }));
          unpack.push({ dir, range });
          for (const file of step.inlineFiles) lines.push(['inline', file.path, `${dir}/${posix.basename(file.path)}`].join('\t'));
        }
        jobs.push({ kind: 'run', step, text, mounts: lines.join('\n'), unpack, network: item.network, secrets });
      }
    }
    await inputs.finish();

    // written back after the last step: the ids some step may change, unless private found them in use
    const kept = [...caches].filter(([, use]) => use.keep);
    // spec.json's step brings its own VM size (buildVMMemorySize; diskSize sizes its disks in stage-vm.ts)
    const root = missing.find((item) => item.step.kind === 'root')?.step as RootStep | undefined;
    const ids: number[] = [];
    const started: number[] = [];
    this.#emit({ type: 'boot', stage: stage.name ?? `stage-${stage.index}`, steps: jobs.length });
    this.#boots++;
    const built = await buildStageInVm({
      architecture,
      lowers,
      source: describeBase(this.plan, stage),
      jobs,
      ...(inputs.used ? { inputs: inputs.path } : {}),
      tmp: stageTmp,
      clampMtime: this.options.clampMtime,
      memoryMiB: root?.buildVMMemorySize ?? this.options.memoryMiB ?? DEFAULT_MEMORY_MIB,
      diskMiB: this.options.diskMiB ?? DEFAULT_DISK_MIB,
      ...(this.options.signal ? { signal: this.options.signal } : {}),
      onStart: (job) => {
        showEmptyBefore(missing[job]!.position);
        const id = ++this.#vertex;
        ids[job] = id;
        started[job] = Date.now();
        this.#emit({ type: 'vertex', id, name: missing[job]!.name });
      },
      onOutput: (job, chunk) => this.#emit({ type: 'output', id: ids[job]!, chunk }),
      onCommitted: (job) => this.#emit({ type: 'done', id: ids[job]!, seconds: (Date.now() - started[job]!) / 1000 }),
      saveCaches: kept.map(([, use]) => use.dir),
      onCacheSaved: (i, tar) => this.#keepCacheMount(kept[i]![0], kept[i]![1], platform, tar),
    });
    const layers: Layer[] = [];
    for (const [i, file] of built.entries()) {
      const item = missing[i]!;
      if (item.step.kind === 'root') {
        const warning = rootChangeWarning(file.root);
        if (warning) this.#emit({ type: 'warning', message: warning });
      }
      if (item.key !== null) await timePhase('build cache store', () => this.options.cache.store(item.key!, file, { createdBy: item.step.createdBy ?? describeStep(item.step), platform }));
      layers.push(new FileLayer(file.path, file.diffId, file.size, true));
      this.#reports.push({ stage: index, name: item.name, key: item.key, diffId: file.diffId, cache: null });
    }
    return layers;
  }

  /**
   * The stored content of a cache mount for this stage, undefined when it starts empty: sharing=locked
   * waits for the lock, sharing=private takes it when free and otherwise starts empty and keeps nothing.
   */
  async #openCacheMount(id: string, use: CacheMountUse, platform: string, locks: CacheMountLock[]): Promise<string | undefined> {
    const store = this.#cacheMounts();
    if (use.sharing !== 'shared') {
      const lock = await store.lock(use.storeId, platform, {
        wait: use.sharing === 'locked',
        ...(this.options.signal ? { signal: this.options.signal } : {}),
        onWait: (pid) => this.#emit({ type: 'warning', message: `waiting for the cache mount id=${id} (sharing=locked), which another build (pid ${pid}) holds` }),
      });
      if (!lock) {
        use.keep = false;
        return undefined;
      }
      locks.push(lock);
    }
    return store.open(use.storeId, platform);
  }

  /** A cache mount's tar from the VM kept for the next build; when it cannot be, the build goes on with a warning. */
  async #keepCacheMount(id: string, use: CacheMountUse, platform: string, tar: () => Readable): Promise<void> {
    try {
      await this.#cacheMounts().keep(use.storeId, platform, tar);
    } catch (err) {
      this.#emit({ type: 'warning', message: `the cache mount id=${id} was not kept for the next build: ${(err as Error).message}` });
    }
  }

  #cacheMounts(): CacheMountStore {
    return (this.#cacheMountStore ??= this.options.cacheMounts ?? new CacheMountStore());
  }
}

interface CacheMountUse {
  /** its directory on the scratch disk */
  dir: string;
  /** locked if any step of the stage mounts it so, else private if one does, else shared */
  sharing: 'shared' | 'private' | 'locked';
  /** written back after the stage: some step mounts it read-write (and private got the lock) */
  keep: boolean;
  /** its stored content is already on the inputs disk */
  opened: boolean;
  /** from=…,source=…: what it starts as when nothing is kept */
  seed?: { from: FileSource; source: string };
  /** the name it is kept under: its id, and for a seeded one the digest of its seed */
  storeId: string;
}

/** The cache mounts the steps use, by id, in the order they are first mounted. */
function cacheMountUses(items: readonly Prepared[], otherSeed: (step: RunStep, id: string) => Error): Map<string, CacheMountUse> {
  const uses = new Map<string, CacheMountUse>();
  const rank = { shared: 0, private: 1, locked: 2 } as const;
  for (const { step } of items) {
    if (step.kind !== 'run') continue;
    for (const mount of step.mounts) {
      if (mount.type !== 'cache') continue;
      const seed = mount.from ? { from: mount.from, source: mount.source ?? '/' } : undefined;
      const earlier = uses.get(mount.id);
      if (earlier && JSON.stringify(earlier.seed) !== JSON.stringify(seed)) throw otherSeed(step, mount.id);
      const use = earlier ?? { dir: cacheDirOf(mount.id), sharing: mount.sharing, keep: false, opened: false, storeId: mount.id, ...(seed ? { seed } : {}) };
      if (rank[mount.sharing] > rank[use.sharing]) use.sharing = mount.sharing;
      use.keep ||= !mount.readonly;
      uses.set(mount.id, use);
    }
  }
  return uses;
}

async function* listOf<T>(items: readonly T[]): AsyncGenerator<T> {
  yield* items;
}

function chmodOf(step: CopyStep): { chmod?: number } {
  return step.chmod === undefined ? {} : { chmod: step.chmod };
}

function hex12(digest: Digest): string {
  return digest.slice(7, 19);
}

/** An error from preparing a step, led by where the step is. */
function located(step: Step, err: unknown): unknown {
  if (err instanceof BuildStepError && !err.message.startsWith(step.location.file)) {
    return stepError(step.location, describeStep(step), err.message, { cause: err });
  }
  return err;
}

/** The instruction as a person reads it in progress lines and errors. */
export function describeStep(step: Step): string {
  const text = step.createdBy ?? step.cacheText;
  if (step.kind === 'run') {
    // "RUN |2 A=b /bin/sh -c cmd # buildkit" → "RUN cmd", as BuildKit's progress shows it
    const shellForm = step.argv.length >= 3 && step.argv[step.argv.length - 2] === '-c';
    const command = shellForm ? step.argv[step.argv.length - 1]! : JSON.stringify(step.argv);
    return `RUN ${command}`;
  }
  return text.replace(/ # buildkit$/, '');
}

function describeBase(plan: Plan, stage: Stage): string {
  switch (stage.base.kind) {
    case 'scratch':
      return 'scratch';
    case 'image':
      return stage.base.ref.replace(/^docker:\/\//, '');
    case 'stage': {
      const base = plan.stages[stage.base.stage]!;
      return base.name ?? `stage-${base.index}`;
    }
  }
}
