// dockvm's library API: the same operations the CLI runs, as typed ESM exports.
export * from './errors.js';
export * from './image/digest.js';
export * from './image/media-types.js';
export type * from './image/config.js';
export type * from './image/descriptor.js';
export type * from './image/image.js';
export * from './layer/tar.js';
export * from './transport/index.js';
export { flattenImage, type FlattenOptions, type FlattenStats } from './flatten/flatten.js';
export { exportInVm, type VmExportOptions, type VmExportResult } from './build/export-vm.js';
export { parseWhiteout, type Whiteout } from './layer/whiteout.js';
export {
  openRegistryImage,
  pushImage,
  resolveDigest,
  Credentials,
  parseCreds,
  type RegistryImage,
  type RegistryOptions,
  type OpenRegistryImageOptions,
  type PushOptions,
  type PushResult,
} from './transport/registry/index.js';
export { pull, type PullOptions, type PullResult } from './cli/pull.js';
export { push } from './cli/push.js';
export {
  startVm,
  Vm,
  createScratchDisk,
  qemuImgCreate,
  qemuImgInfo,
  resolveKernel,
  type VmOptions,
  type VmDisk,
  type ExecOptions,
  type ExecResult,
  type RunningCommand,
  type GuestKernel,
  type ImageInfo,
} from './vm/index.js';
export { doctor, type DoctorReport } from './vm/doctor.js';
export { refresh, readLock, lockPathFor, LockFileError, type RefreshOptions, type RefreshResult, type RefreshStatus, type Lock } from './refresh/index.js';
export { BuildCache, stepKey, hashSelection, guestVersion, pruneCaches, type BuildCacheOptions, type StepKeyMaterial, type PruneOptions, type PruneResult } from './cache/index.js';
