// The VM runtime: boot a throwaway QEMU microVM, run commands in it through the guest agent, stop it.
export { startVm, bootVm, snapshotsSaved, Vm, chooseMachine, chooseTransport, vsockUsable, type VmOptions, type BootPlan, type Transport } from './vm.js';
export { ARCHITECTURES, ARCHITECTURE_NAMES, architectureRow, defaultArchitecture, hostRow, isNative, type Architecture, type ArchitectureRow } from './architectures.js';
export { fetchGuestTools } from './guest-tools.js';
export type { ExecOptions, ExecResult, OutputSink, RunningCommand } from './agent-client.js';
export { MAX_FILE_BYTES, toWritable } from './agent-client.js';
export { createScratchDisk, partsOf, type DiskPart, type VmDisk } from './disks.js';
export { qemuImgCreate, qemuImgInfo, type ImageInfo, type ImageFormat } from './qemu-img.js';
export { resolveKernel, fetchDebianKernel, type GuestKernel } from './kernel.js';
export { ensureInitramfs, type Initramfs } from './initramfs.js';
export { bootImage, type BootImage } from './boot-image.js';
export { ensureAgent } from './agent-binary.js';
export { chooseAccel, cachedAccel, kvmDevicePresent, type AccelChoice } from './accel.js';
export { findQemu, type Accel, type Machine, type QemuBinary } from './qemu.js';
export { cacheDir } from '../cache-dir.js';
