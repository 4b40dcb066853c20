// The nightly base-image refresh: lock files and the refresh job (dockvm refresh).
export { refresh, type RefreshOptions, type RefreshResult, type RefreshStatus } from './refresh.js';
export { readLock, writeLock, renderLock, lockPathFor, LockFileError, LOCK_VERSION, type Lock } from './lock.js';
export { inputsHash, LAYER_FORMAT_VERSION } from './inputs.js';
export { parseShard, selectSpecs, type Shard } from './shard.js';
export { pushTarget } from './push-target.js';
