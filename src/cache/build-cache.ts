// The build cache the executor (and run-as-root) asks before it boots a VM for a step: the local store
// first, then each --cache-from registry in turn (an entry found there is verified and joins the local
// store); what a step builds is stored locally and pushed to --cache-to. A cache never fails a build: a
// registry that cannot be reached, or a store that cannot be written, is one warning line and a miss. A
// poisoned registry entry is a warning that names the key and the registry, and a miss.
import { FileLayer } from '../image/file-layer.js';
import type { Digest } from '../image/digest.js';
import type { RegistryOptions } from '../transport/registry/index.js';
import { LocalStore, buildCacheDir, type CacheEntry, type CachedLayer } from './local-store.js';
import { pruneCaches } from './prune.js';
import { PoisonedEntryError, fetchEntry, hasEntry, parseCacheRepository, pushEntry, type CacheRepository } from './registry-store.js';

export interface BuildCacheOptions {
  /** --no-cache: every lookup misses (what is built is still stored, so the next build hits). DOCKVM_BUILD_CACHE=off turns the cache off altogether. */
  noCache?: boolean;
  /** the local store (default: DOCKVM_BUILD_CACHE_DIR, else build-cache/ in dockvm's cache) */
  dir?: string;
  /** --cache-from: registries to look in after the local store, in order (docker://REG/REPO) */
  cacheFrom?: readonly string[];
  /** --cache-to: registries each new entry is pushed to, and a local hit too when they lack it */
  cacheTo?: readonly string[];
  /** credentials and TLS for those registries */
  registry?: RegistryOptions;
  /** the bound the caches are pruned to after a store (default: DOCKVM_CACHE_MAX_SIZE, else 10 GiB) */
  maxSize?: number;
  /** one line per problem (default: "dockvm: warning: …" on stderr) */
  onWarning?: (message: string) => void;
  env?: NodeJS.ProcessEnv;
}

export interface CacheHit extends CachedLayer {
  /** "local", or the docker://REG/REPO the entry came from */
  source: string;
}

/** What a step built, for store(): the layer file (sha256 = diffId) and its history line. */
export interface BuiltLayer {
  path: string;
  diffId: Digest;
  size: number;
}

export interface StepRecord {
  createdBy: string;
  /** "linux/amd64" */
  platform: string;
  meta?: Record<string, string>;
}

export class BuildCache {
  readonly local: LocalStore;
  readonly #options: BuildCacheOptions;
  /** DOCKVM_BUILD_CACHE=off: no lookups, no stores, no registries */
  readonly #off: boolean;
  readonly #from: CacheRepository[];
  readonly #to: CacheRepository[];

  /** Registry names are checked here: a malformed --cache-from or --cache-to is an error before anything runs. */
  constructor(options: BuildCacheOptions = {}) {
    this.#options = options;
    this.#off = (options.env ?? process.env).DOCKVM_BUILD_CACHE === 'off';
    this.local = new LocalStore(options.dir ?? buildCacheDir(options.env));
    this.#from = (options.cacheFrom ?? []).map(parseCacheRepository);
    this.#to = (options.cacheTo ?? []).map(parseCacheRepository);
  }

  /** The cached layer of `key`, or undefined (always, with noCache). */
  async lookup(key: Digest): Promise<CacheHit | undefined> {
    if (this.#off || this.#options.noCache) return undefined;
    const local = await this.local.get(key).catch((err: unknown) => {
      this.#warn(`cannot read the build cache in ${this.local.dir} (${reason(err)}); building without it`);
      return undefined;
    });
    if (local) {
      await this.#export(local, []);
      return { ...local, source: 'local' };
    }
    for (const repo of this.#from) {
      try {
        const fetched = await fetchEntry(repo, key, this.#registry(), (entry, tar) => this.local.put(entry, tar));
        if (!fetched) continue;
        await this.#export(fetched, [repo]);
        return { ...fetched, source: repo.text };
      } catch (err) {
        if (err instanceof PoisonedEntryError) this.#warn(err.message);
        else this.#warn(`cannot read the build cache entry ${key} from ${repo.text} (${reason(err)}); going on without it`);
      }
    }
    return undefined;
  }

  /** Keep what a step built under `key`: locally, and in every --cache-to registry. Never throws. */
  async store(key: Digest, layer: BuiltLayer, record: StepRecord): Promise<void> {
    if (this.#off) return;
    const entry: CacheEntry = { key, diffId: layer.diffId, size: layer.size, createdBy: record.createdBy, platform: record.platform, meta: record.meta ?? {} };
    try {
      await this.local.put(entry, layer.path);
    } catch (err) {
      this.#warn(`cannot store the build cache entry ${key} in ${this.local.dir} (${reason(err)}); the build goes on`);
    }
    for (const repo of this.#to) await this.#push(repo, entry, layer.path);
    try {
      const env = this.#options.env;
      await pruneCaches({ onlyWhenOver: true, buildCacheDir: this.local.dir, ...(this.#options.maxSize !== undefined ? { maxSize: this.#options.maxSize } : {}), ...(env ? { env } : {}) });
    } catch (err) {
      this.#warn(`cannot prune dockvm's cache (${reason(err)})`);
    }
  }

  /** A hit as a layer of the image being built. */
  static layerOf(hit: CachedLayer): FileLayer {
    return new FileLayer(hit.path, hit.entry.diffId, hit.entry.size);
  }

  /** A hit found elsewhere goes to the --cache-to registries that lack it: the registry is the shared store. */
  async #export(hit: CachedLayer, skip: readonly CacheRepository[]): Promise<void> {
    for (const repo of this.#to) {
      if (skip.some((other) => other.text === repo.text)) continue;
      try {
        if (await hasEntry(repo, hit.entry.key, this.#registry())) continue;
      } catch (err) {
        this.#warn(`cannot reach the build cache in ${repo.text} (${reason(err)}); the entry was not pushed`);
        continue;
      }
      await this.#push(repo, hit.entry, hit.path);
    }
  }

  async #push(repo: CacheRepository, entry: CacheEntry, path: string): Promise<void> {
    try {
      await pushEntry(repo, entry, path, this.#registry());
    } catch (err) {
      this.#warn(`cannot push the build cache entry ${entry.key} to ${repo.text} (${reason(err)}); the build goes on`);
    }
  }

  #registry(): RegistryOptions {
    return this.#options.registry ?? {};
  }

  #warn(message: string): void {
    if (this.#options.onWarning) this.#options.onWarning(message);
    else process.stderr.write(`dockvm: warning: ${message}\n`);
  }
}

function reason(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const message = err instanceof Error ? err.message : String(err);
  return code && !message.includes(code) ? `${code}: ${message}` : message;
}
