// spec.json's step in the build VM (runAsRoot), as the executor runs it (src/executor/stage-vm.ts): the base
// layers as squashfs lowers, an ext4 scratch disk for the upper, copyToRoot unpacked over the root, the
// script run as root, extraCommands in the upper; then the upper is described onto an output disk — its
// metadata and where each file's bytes lie on the scratch disk, which the host then reads (as untrusted
// input, the disk image too) to write the layer. Every step's layer, a Containerfile's too, is written so.
import { DockvmError, PlatformError, ScriptError, SpecError, UsageError, VmError, stderrTail } from '../errors.js';
import { writeLayerFile, writeLayerFromEntries, type LayerFile } from '../layer/layer-file.js';
import { fromOverlayUpperEntry } from '../layer/overlay.js';
import { readUpperManifest } from '../layer/upper-manifest.js';
import { boundedEntries, layerContentProblem } from '../layer/layer-bound.js';
import type { TarEntry } from '../layer/tar.js';
import type { RootStep } from '../plan/plan.js';
import { createScratchDisk, type OutputSink } from '../vm/index.js';
import { describeExit, type BuildVm } from './build-vm.js';
import { launchFailure, parseShebang, runStep, scriptLaunch, type LaunchFailure } from './interpreter.js';
import { describePlatform } from './platform.js';
import { guestPlatform } from '../vm/guest-platform.js';

export interface VmBuildOptions {
  /** give up after this long (the --timeout flag) */
  timeoutMs?: number;
  /** where the script's output goes (default: dockvm's stderr; stdout may carry JSON or data) */
  onScriptOutput?: OutputSink;
  /** one-line warnings about the build (default: dockvm's stderr, "dockvm: warning: …") */
  onWarning?: (message: string) => void;
}

/**
 * The scratch disk is sparse and twice diskSize, and the layer is measured after the run: a layer that
 * outgrew diskSize gets an error saying exactly how big it was, rather than a bare "No space left".
 */
const SCRATCH_FACTOR = 2;

/** The output disk: room for a tar of everything the scratch disk can hold (sparse, like it). */
export function outDiskBytes(diskSizeMiB: number): number {
  return (diskSizeMiB * SCRATCH_FACTOR + 64) * 1024 * 1024;
}

/**
 * The sparse ext4 scratch disk for an overlay upper that may take `diskSizeMiB` (and is measured after).
 * No journal: the VM is thrown away and the host reads the disk only after the guest synced it, so
 * there is no crash to recover from, and journalling writes metadata twice under emulation (measured
 * here: a dpkg -i RUN step 4 % faster without, shell -- true 4 %).
 */
export async function createUpperDisk(path: string, diskSizeMiB: number): Promise<void> {
  await createScratchDisk(path, diskSizeMiB * SCRATCH_FACTOR, undefined, { journal: false });
}

/**
 * spec.json's step (src/plan/plan.ts RootStep) in a build VM whose overlay is mounted with copyToRoot
 * unpacked over it: the runAsRoot script, then extraCommands in the upper (the new layer's root, the
 * overlay unmounted). The executor's stage VM (src/executor/stage-vm.ts) commits the upper as its layer.
 */
export async function runRootScripts(vm: BuildVm, step: RootStep, output: OutputSink): Promise<void> {
  await runScript(vm, step, output);
  if (step.extraCommands.trim() === '') return;
  const extra = await vm.step('extra', { env: { DOCKVM_EXTRA: step.extraCommands }, onStdout: output, onStderr: output });
  if (extra.exitCode !== 0) {
    throw new ScriptError(`extraCommands failed (${describeExit(extra)})${stderrTail(extra.stderr)}`, { command: 'extraCommands' });
  }
}

/** A committed upper that outgrew diskSize: the error says how big it was (the scratch disk has room for twice that). */
export function checkUpperSize(upperKiB: number, diskSize: number): void {
  const upperMiB = Math.ceil(upperKiB / 1024);
  if (upperMiB > diskSize) throw diskTooSmall(diskSize, `${upperMiB} MiB`, upperMiB);
}

/** The upper's directories the lowers lack: an opaque xattr on one of them means nothing. */
export async function newDirectories(vm: BuildVm): Promise<Set<string>> {
  return parseNul((await vm.mustStep('newdirs')).stdout);
}

/** What the pack step left on the output disk: the upper's manifest (the default), or a GNU tar of it. */
export interface PackedUpper {
  format: 'manifest' | 'tar';
  /** how many bytes of the output disk it takes */
  bytes: number;
  /** what the upper takes on the scratch disk, as du -sk counts */
  upperKiB: number;
}

/**
 * How the pack step describes the upper: a manifest with file contents as extents of the scratch disk
 * (what builds use); the same manifest with the contents copied in (what it does for a file whose
 * extents it cannot give); a GNU tar archive (the old way). The last two are for tests to compare with.
 */
export type PackWay = 'extents' | 'inline' | 'tar';

/** Run the pack step (the overlay is unmounted first). */
export async function packUpper(vm: BuildVm, way: PackWay = 'extents'): Promise<PackedUpper> {
  const result = await vm.mustStep('pack', way === 'extents' ? {} : { env: { DOCKVM_PACK: way } });
  const format = way === 'tar' ? 'tar' : 'manifest';
  const fields = keyValues(result.stdout.toString());
  const bytes = Number(fields[format === 'tar' ? 'dockvm-tar-bytes' : 'dockvm-manifest-bytes']);
  const upperKiB = Number(fields['dockvm-upper-kib']);
  if (!Number.isSafeInteger(bytes) || bytes <= 0 || !Number.isSafeInteger(upperKiB) || upperKiB < 0) {
    throw new VmError(`the build VM did not report the size of the layer's ${format}${stderrTail(result.stderr)}`);
  }
  return { format, bytes, upperKiB };
}

/**
 * The layer from what packUpper (or a stage's commit) left on `disks.out` (a manifest's file contents are
 * on `disks.scratch`): whiteouts into OCI form, an opaque xattr dropped on a directory the lowers lack
 * (`newDirs`), normalised. `diskSize`: spec.json's bound on the layer (none for a Containerfile's steps,
 * whose scratch disk the executor sizes); `source` names the output in errors.
 */
export async function writePackedLayer(
  packed: Pick<PackedUpper, 'format' | 'bytes'>,
  disks: { out: string; scratch: string },
  output: string,
  options: {
    clampMtime: number;
    newDirs: ReadonlySet<string>;
    /** spec.json's diskSize: a layer's contents beyond it are the diskSize error */
    diskSize?: number;
    source?: string;
    /** the scratch disk's inodes, read before the guest ran: a manifest listing more is forged (layer-bound.ts) */
    maxEntries?: number;
    /** the scratch disk's size: more file content than that is a sparse file's holes (layer-bound.ts) */
    contentLimitBytes?: number;
  },
): Promise<LayerFile> {
  const layerOptions = {
    source: options.source ?? 'the build VM\'s output',
    clampMtime: options.clampMtime,
    convert: (entry: TarEntry) => fromOverlayUpperEntry(entry, (dir) => !options.newDirs.has(dir)),
  };
  if (packed.format === 'tar') return writeLayerFile(disks.out, output, { ...layerOptions, size: packed.bytes });
  const manifest = readUpperManifest({ path: disks.out, size: packed.bytes, disk: disks.scratch, source: layerOptions.source });
  const entries = boundedEntries(manifest, options.maxEntries ?? Infinity);
  if (typeof entries === 'string') throw new VmError(`${layerOptions.source}: ${entries}`);
  // A sparse file takes its full size in a layer (tar stores holes as zeros), however little it takes
  // on the scratch disk. The old way's tar had to fit the output disk; this layer's contents must too.
  const contentBytes = entries.reduce((sum, { entry }) => sum + entry.size, 0);
  if (options.diskSize !== undefined && contentBytes > outDiskBytes(options.diskSize)) {
    const neededMiB = Math.ceil(contentBytes / 2 ** 20);
    throw diskTooSmall(options.diskSize, `${neededMiB} MiB (sparse files count their full size)`, neededMiB);
  }
  const tooBig = options.contentLimitBytes === undefined ? undefined : layerContentProblem(entries, options.contentLimitBytes);
  if (tooBig !== undefined) throw new VmError(`${layerOptions.source}: ${tooBig}`);
  return writeLayerFromEntries(entries, output, layerOptions);
}

/**
 * DOCKVM_MAX_PROCESSES, for the guest: how many processes (threads count) a step may have at once in the
 * build VM; unset, the guest allows one per 2 MiB of its memory (vm/run-in-image.c).
 */
export function maxProcessesEnv(): Record<string, string> {
  const value = process.env.DOCKVM_MAX_PROCESSES ?? '';
  if (value === '') return {};
  if (!/^[1-9]\d{0,6}$/.test(value)) throw new UsageError(`DOCKVM_MAX_PROCESSES=${value} is not a number of processes: give a whole number from 1, or unset it (one per 2 MiB of the VM's memory)`);
  return { DOCKVM_MAX_PROCESSES: value };
}

// The guest's markers (vm/run-in-image.c) are written once every process of the step is gone, but may
// follow a partial line one of them left as it was killed ("/bin/sh: 1: dockvm-pids-max=486"): they are
// found at the end of a line, not only at its start.
const PIDS_MAX_MARKER = /dockvm-pids-max=(\d+)$/m;
const OOM_KILLS_MARKER = /dockvm-oom-kills=\d+$/m;

/** The guest stopped a step at its process limit (dockvm-pids-max=N): a fork bomb, most likely. */
export function processLimitHit(stderr: string): string | undefined {
  const limit = PIDS_MAX_MARKER.exec(stderr)?.[1];
  return limit === undefined ? undefined : `hit the build VM's limit of ${limit} processes (a fork bomb?) and was stopped; set DOCKVM_MAX_PROCESSES to raise it (or give the VM more memory)`;
}

/** The OOM killer killed a process of the step (dockvm-oom-kills=N). */
export function oomKilled(stderr: string): boolean {
  return OOM_KILLS_MARKER.test(stderr);
}

/** `stderr` without the guest's OOM marker, for the tail an error shows. */
export function withoutOomMarker(stderr: string): string {
  return stderr.replace(/dockvm-oom-kills=\d+\n?/g, '');
}

async function runScript(vm: BuildVm, step: RootStep, output: OutputSink): Promise<void> {
  const script = step.runAsRoot ?? '';
  const launch = runStep(step.env, scriptLaunch(script));
  const run = await vm.step('run', { ...launch, env: { ...launch.env, ...maxProcessesEnv() }, onStdout: output, onStderr: output });
  if (run.exitCode === 0) return;
  const bomb = processLimitHit(run.stderr);
  if (bomb) throw new ScriptError(`runAsRoot ${bomb}`, { command: 'runAsRoot' });
  // guest.sh reports OOM kills in the script's memory cgroup
  if (oomKilled(run.stderr)) {
    throw new SpecError(
      `runAsRoot ran out of memory: buildVMMemorySize ${step.buildVMMemorySize} MiB was too small; set buildVMMemorySize to at least ${step.buildVMMemorySize * 2}`,
      [],
      { field: 'buildVMMemorySize' },
    );
  }
  if (/No space left on device/.test(run.stderr)) {
    throw diskTooSmall(step.diskSize, `more than ${step.diskSize * SCRATCH_FACTOR} MiB`, step.diskSize * SCRATCH_FACTOR * 2);
  }
  const failure = launchFailure(run.stderr);
  if (failure) throw interpreterError(failure, script, run.stderr, describePlatform(guestPlatform(vm.vm.architecture)));
  throw new ScriptError(`runAsRoot failed (${describeExit(run)})${stderrTail(run.stderr)}`, {
    command: 'runAsRoot',
    ...(run.exitCode !== null ? { exitCode: run.exitCode } : {}),
  });
}

/** The script never started: its interpreter is missing, or is there but cannot be executed. */
function interpreterError(failure: LaunchFailure, script: string, stderr: string, vmPlatform: string): DockvmError {
  const context = { command: 'runAsRoot', exitCode: failure.exitCode };
  if (failure.execFormat) {
    return new PlatformError(
      `runAsRoot: the image's ${failure.program} cannot be executed in the build VM (exec format error): it is not a ` +
        `${vmPlatform} program, whatever the image's config says; use a ${vmPlatform} image`,
      context,
    );
  }
  const shebang = parseShebang(script);
  const why = failure.exitCode === 127 ? 'which the image lacks' : 'which cannot be executed';
  const named = shebang?.interpreter === failure.program ? `runAsRoot's shebang names ${failure.program}` : `runAsRoot's interpreter is ${failure.program}`;
  return new ScriptError(`${named}, ${why}${stderrTail(stderr, 3)}`, context);
}

function diskTooSmall(diskSize: number, needed: string, atLeastMiB: number): SpecError {
  const suggestion = Math.ceil((atLeastMiB * 1.25) / 256) * 256;
  return new SpecError(`diskSize ${diskSize} MiB was too small: the layer needed ${needed}; set diskSize to at least ${suggestion}`, [], { field: 'diskSize' });
}

function parseNul(data: Buffer): Set<string> {
  return new Set(
    data
      .toString('latin1')
      .split('\0')
      .filter((path) => path !== ''),
  );
}

function keyValues(text: string): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) fields[line.slice(0, eq)] = line.slice(eq + 1).trim();
  }
  return fields;
}
