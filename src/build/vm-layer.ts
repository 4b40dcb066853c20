// The new layer made in the build VM (runAsRoot): base layers as squashfs lowers, an ext4 scratch disk for
// the upper, copyToRoot unpacked over the root, the script run as root, extraCommands in the upper, and
// the upper packed as a tar onto an output disk — which the host then reads as untrusted input.
import { join } from 'node:path';
import { DockvmError, PlatformError, ScriptError, SpecError, VmError, stderrTail } from '../errors.js';
import type { Image } from '../image/image.js';
import { writeLayerFile, type LayerFile } from '../layer/layer-file.js';
import { fromOverlayUpperEntry } from '../layer/overlay.js';
import type { BuildSpec } from '../spec/load.js';
import { createScratchDisk, qemuImgCreate } from '../vm/index.js';
import { describeExit, withBuildVm, type BuildVm } from './build-vm.js';
import { lowersFor } from './lowers.js';
import { scriptEnvironment } from './config.js';
import { rootChangeWarning } from './root-change.js';
import { launchFailure, parseShebang, runStep, scriptLaunch, type LaunchFailure } from './interpreter.js';
import { describePlatform } from './platform.js';
import { GUEST_PLATFORM } from '../vm/guest-platform.js';

export interface VmBuildOptions {
  /** give up after this long (the --timeout flag) */
  timeoutMs?: number;
  /** where the script's output goes (default: dockvm's stderr; stdout may carry JSON or data) */
  onScriptOutput?: (chunk: Buffer) => void;
  /** one-line warnings about the build (default: dockvm's stderr, "dockvm: warning: …") */
  onWarning?: (message: string) => void;
}

/**
 * The scratch disk is sparse and twice diskSize, and the layer is measured after the run: a layer that
 * outgrew diskSize gets an error saying exactly how big it was, rather than a bare "No space left".
 */
const SCRATCH_FACTOR = 2;

/** `copy`: the copyToRoot tar, each entry at the path it lands on (src/build/copy-over-base.ts). */
export async function buildLayerInVm(spec: BuildSpec, base: Image | undefined, copy: string | undefined, tmp: string, clampMtime: number, options: VmBuildOptions): Promise<LayerFile> {
  const lowers = await lowersFor(base, spec.fromImage ?? 'scratch');
  const scratch = join(tmp, 'scratch.ext4');
  const out = join(tmp, 'upper.tar.disk');
  await createScratchDisk(scratch, spec.diskSize * SCRATCH_FACTOR);
  await qemuImgCreate(out, (spec.diskSize * SCRATCH_FACTOR + 64) * 1024 * 1024, 'raw');
  const signal = options.timeoutMs === undefined ? undefined : timeoutSignal(options.timeoutMs);
  const output = options.onScriptOutput ?? ((chunk: Buffer) => void process.stderr.write(chunk));

  const { tarBytes, newDirs } = await withBuildVm(
    { lowers, scratch, ...(copy ? { copy } : {}), out },
    { memoryMiB: spec.buildVMMemorySize, network: spec.network, ...(signal ? { signal } : {}) },
    async (vm) => {
      await vm.mustStep('mount', { env: { DOCKVM_KEEP_DIRLINKS: spec.keepContentsDirlinks ? '1' : '0' } });
      await runScript(vm, spec, base, output);
      if (spec.extraCommands.trim() !== '') {
        const extra = await vm.step('extra', { env: { DOCKVM_EXTRA: spec.extraCommands }, onStdout: output, onStderr: output });
        if (extra.exitCode !== 0) {
          throw new ScriptError(`extraCommands failed (${describeExit(extra)})${stderrTail(extra.stderr)}`, { command: 'extraCommands' });
        }
      }
      const newDirs = parseNul((await vm.mustStep('newdirs')).stdout);
      const packed = await vm.mustStep('pack');
      const fields = keyValues(packed.stdout.toString());
      const upperMiB = Math.ceil(Number(fields['dockvm-upper-kib']) / 1024);
      if (upperMiB > spec.diskSize) throw diskTooSmall(spec.diskSize, `${upperMiB} MiB`, upperMiB);
      const tarBytes = Number(fields['dockvm-tar-bytes']);
      if (!Number.isSafeInteger(tarBytes) || tarBytes <= 0) throw new VmError(`the build VM did not report the size of the layer tar${stderrTail(packed.stderr)}`);
      return { tarBytes, newDirs };
    },
  );
  const layer = await writeLayerFile(out, join(tmp, 'layer.tar'), {
    source: 'the build VM\'s output',
    size: tarBytes,
    clampMtime,
    convert: (entry) => fromOverlayUpperEntry(entry, (dir) => !newDirs.has(dir)),
  });
  const warning = rootChangeWarning(layer.root);
  if (warning) (options.onWarning ?? ((message) => void process.stderr.write(`dockvm: warning: ${message}\n`)))(warning);
  return layer;
}

async function runScript(vm: BuildVm, spec: BuildSpec, base: Image | undefined, output: (chunk: Buffer) => void): Promise<void> {
  const env = scriptEnvironment(mergedEnvOf(base, spec), spec.env);
  const run = await vm.step('run', { ...runStep(env, scriptLaunch(spec.runAsRoot ?? '')), onStdout: output, onStderr: output });
  if (run.exitCode === 0) return;
  // guest.sh reports OOM kills in the script's memory cgroup
  if (/^dockvm-oom-kills=\d+$/m.test(run.stderr)) {
    throw new SpecError(
      `runAsRoot ran out of memory: buildVMMemorySize ${spec.buildVMMemorySize} MiB was too small; set buildVMMemorySize to at least ${spec.buildVMMemorySize * 2}`,
      [],
      { field: 'buildVMMemorySize' },
    );
  }
  if (/No space left on device/.test(run.stderr)) {
    throw diskTooSmall(spec.diskSize, `more than ${spec.diskSize * SCRATCH_FACTOR} MiB`, spec.diskSize * SCRATCH_FACTOR * 2);
  }
  const failure = launchFailure(run.stderr);
  if (failure) throw interpreterError(failure, spec.runAsRoot ?? '', run.stderr);
  throw new ScriptError(`runAsRoot failed (${describeExit(run)})${stderrTail(run.stderr)}`, {
    command: 'runAsRoot',
    ...(run.exitCode !== null ? { exitCode: run.exitCode } : {}),
  });
}

/** The script never started: its interpreter is missing, or is there but cannot be executed. */
function interpreterError(failure: LaunchFailure, script: string, stderr: string): DockvmError {
  const context = { command: 'runAsRoot', exitCode: failure.exitCode };
  if (failure.execFormat) {
    return new PlatformError(
      `runAsRoot: the image's ${failure.program} cannot be executed in the build VM (exec format error): it is not a ` +
        `${describePlatform(GUEST_PLATFORM)} program, whatever the image's config says; use a ${describePlatform(GUEST_PLATFORM)} image`,
      context,
    );
  }
  const shebang = parseShebang(script);
  const why = failure.exitCode === 127 ? 'which the image lacks' : 'which cannot be executed';
  const named = shebang?.interpreter === failure.program ? `runAsRoot's shebang names ${failure.program}` : `runAsRoot's interpreter is ${failure.program}`;
  return new ScriptError(`${named}, ${why}${stderrTail(stderr, 3)}`, context);
}

/** The Env the script sees: the base's, with the spec's config.Env over it. */
function mergedEnvOf(base: Image | undefined, spec: BuildSpec): string[] {
  return [...(base?.config.config?.Env ?? []), ...(spec.config?.Env ?? [])];
}

function diskTooSmall(diskSize: number, needed: string, atLeastMiB: number): SpecError {
  const suggestion = Math.ceil((atLeastMiB * 1.25) / 256) * 256;
  return new SpecError(`diskSize ${diskSize} MiB was too small: the layer needed ${needed}; set diskSize to at least ${suggestion}`, [], { field: 'diskSize' });
}

function timeoutSignal(ms: number): AbortSignal {
  const controller = new AbortController();
  setTimeout(() => controller.abort(new VmError(`the build took longer than --timeout ${ms / 1000} s; the VM was stopped`)), ms).unref();
  return controller.signal;
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
