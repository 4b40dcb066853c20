// The build cache (issue 10): step keys, the local store, registry entries, pruning. What the executor
// (and run-as-root) calls: stepKey() for each step, BuildCache.lookup() before booting for it, store()
// after building it.
export { stepKey, CACHE_KEY_VERSION, type StepKeyMaterial, type KeyValue } from './key.js';
export { hashSelection, hashDirectory, hashFile, type SelectionHashOptions } from './file-hash.js';
export { guestVersion } from './guest-version.js';
export { BuildCache, type BuildCacheOptions, type CacheHit, type BuiltLayer, type StepRecord } from './build-cache.js';
export { LocalStore, buildCacheDir, type CacheEntry, type CachedLayer } from './local-store.js';
export { parseCacheRepository, PoisonedEntryError, type CacheRepository } from './registry-store.js';
export { pruneCaches, describePrune, configuredMaxSize, DEFAULT_MAX_SIZE, type PruneOptions, type PruneResult, type PrunedArea, type CacheArea } from './prune.js';
export { parseSize, formatSize } from './size.js';
export { CacheMountStore, cacheMountsDir, type CacheMountLock } from './cache-mounts.js';
