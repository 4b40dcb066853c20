// The layer steps of one stage that the build cache lacks, run in ONE boot of the build VM: the base's
// layers and the cached steps' layers are the overlay's lowers; each step runs (guest.sh run-step,
// copy-step, workdir-step), then commits: its upper is described (the agent's upper-manifest, as
// run-as-root's pack step does) onto the output disk and becomes a lower of the next step under a fresh
// upper. As soon as a step commits, before the next step (which could rewrite the disks) runs, its
// manifest is read as untrusted input, file contents from the scratch disk's image, and made a layer
// (whiteouts, opaque directories, new directories: writePackedLayer).
// After the last step, the cache mounts to keep are tarred onto the output disk (guest.sh cache-save) and
// handed to the caller once the VM is gone.
// spec.json's one step (a root job) runs here too: copyToRoot unpacked as the stage mounts, its scripts
// (src/build/vm-layer.ts), the same commit; its VM and disks sized by the spec's diskSize.
import { createReadStream } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { VmError, stderrTail } from '../errors.js';
import type { Layer } from '../image/image.js';
import type { LayerFile } from '../layer/layer-file.js';
import { lowerForLayer } from '../build/lowers.js';
import { checkUpperSize, createUpperDisk, maxProcessesEnv, oomKilled, outDiskBytes, processLimitHit, runRootScripts, withoutOomMarker, writePackedLayer } from '../build/vm-layer.js';
import type { CopyStep, RootStep, RunStep, StepLocation, WorkdirStep } from '../plan/plan.js';
import { createScratchDisk, qemuImgCreate, type OutputSink } from '../vm/index.js';
import { EXT4_LOWER_SUFFIX, checkLowerCount, describeExit, withBuildVm, type BuildVm, type LowerImage, type StepResult } from '../build/build-vm.js';
import type { CopyLayout } from './copy-items.js';
import { stepError } from './errors.js';
import { ext4InodeCount } from '../layer/layer-bound.js';
import type { Architecture } from '../vm/architectures.js';
import type { InputRange } from './inputs-disk.js';
import { startPhase, timePhase } from '../timing.js';

/** One step for the VM, with what the host prepared for it. */
export type VmJob =
  | {
      kind: 'run';
      step: RunStep;
      text: string;
      /** DOCKVM_RUN_MOUNTS: one mount a line (guest.sh step_run_step) */
      mounts: string;
      /** inputs to unpack on the scratch disk first: a bind mount's source, a heredoc file */
      unpack: { dir: string; range: InputRange }[];
      network: 'default' | 'none';
      /** secret id → host file, for the secrets this step mounts: in the guest for this step only */
      secrets: ReadonlyMap<string, string>;
    }
  | { kind: 'copy'; step: CopyStep; text: string; range: InputRange; layout: CopyLayout }
  | { kind: 'workdir'; step: WorkdirStep; text: string }
  /** spec.json's step: the stage's only job */
  | { kind: 'root'; step: RootStep; text: string };

export interface StageVmOptions {
  /** the VM's architecture: the stage's platform's */
  architecture: Architecture;
  /** the lowers, bottom first: the base's layers, then the cached steps' layers */
  lowers: readonly Layer[];
  /** names the base in errors */
  source: string;
  jobs: readonly VmJob[];
  /** the inputs disk, when a job reads one */
  inputs?: string;
  tmp: string;
  clampMtime: number;
  memoryMiB: number;
  /** scratch disk size (sparse): every step's upper and the cache mounts live there */
  diskMiB: number;
  signal?: AbortSignal;
  /** a job starts */
  onStart?: (job: number) => void;
  /** a RUN's output, as it comes */
  /** a RUN's output; a promise slows the guest down until it settles (see OutputSink) */
  onOutput?: (job: number, chunk: Buffer) => void | Promise<void>;
  /** a job has committed its layer (the layer file is made after the VM is gone) */
  onCommitted?: (job: number) => void;
  /** cache mount directories (on the scratch disk) the guest tars onto the output disk after the last job */
  saveCaches?: readonly string[];
  /** the tar of saveCaches[index], read off the output disk once the VM is gone (untrusted: the guest wrote it) */
  onCacheSaved?: (index: number, tar: () => Readable) => Promise<void>;
}

interface Committed {
  offset: number;
  bytes: number;
  /** what the upper took on the scratch disk */
  upperKiB: number;
  newDirs: Set<string>;
}

/** The jobs' layers, in order (each a normalised, reproducible layer tar in `tmp`). */
export async function buildStageInVm(options: StageVmOptions): Promise<LayerFile[]> {
  const { tmp, jobs } = options;
  checkLowerCount(options.lowers.length, options.source, { instead: 'build over a base with fewer layers, or make this stage\'s earlier steps fewer (each is a layer)' });
  const lowers: LowerImage[] = [];
  for (const layer of options.lowers) {
    const path = await lowerForLayer(layer, { source: options.source });
    lowers.push({ path, fsType: path.endsWith(EXT4_LOWER_SUFFIX) ? 'ext4' : 'squashfs' });
  }
  const root = rootStepOf(jobs);
  const scratch = join(tmp, 'stage-scratch.ext4');
  const out = join(tmp, 'stage-out.disk');
  // as spec.json's diskSize says: a layer up to diskSize, measured after the run; otherwise every step's
  // packed upper and the cache mounts' tars, one after another: at most the scratch disk's contents,
  // twice over (sparse)
  const outBytes = root ? outDiskBytes(root.diskSize) : 2 * options.diskMiB * 1024 * 1024;
  const maxEntries = await timePhase('disks made', async () => {
    if (root) await createUpperDisk(scratch, root.diskSize);
    else await createScratchDisk(scratch, options.diskMiB);
    await qemuImgCreate(out, outBytes, 'raw');
    return ext4InodeCount(scratch); // before the guest can touch it (src/layer/layer-bound.ts)
  });
  const network = jobs.some((job) => (job.kind === 'run' && job.network === 'default') || (job.kind === 'root' && job.step.network));
  const signal = options.signal;
  const copy = root?.copyTar ?? undefined;

  // Each step's layer is read off the disks as soon as its commit returns, before the next step runs: a
  // step is root in the VM and can write any disk raw (mknod, mount), so what an earlier step left there
  // is the earlier step's only until a later one runs (test/security/guest-escape.test.ts).
  const layers: LayerFile[] = [];
  let saved: { offset: number; bytes: number }[] = [];
  const booted = startPhase('VM boot');
  let stopping = () => {};
  await withBuildVm(
    { lowers, scratch, out, ...(options.inputs ? { inputs: options.inputs } : {}), ...(copy ? { copy } : {}) },
    { architecture: options.architecture, memoryMiB: options.memoryMiB, network, ...(signal ? { signal } : {}) },
    async (vm) => {
      booted();
      // copyToRoot (the copy disk) is unpacked over the root as the overlay is mounted
      // spec.json's step needs none of the tools a Containerfile's steps run chrooted
      const env: Record<string, string> = root ? { DOCKVM_KEEP_DIRLINKS: root.keepContentsDirlinks ? '1' : '0', DOCKVM_STAGE_TOOLS: '0' } : {};
      await timePhase('guest: mount', () => vm.mustStep('stage-mount', { env }));
      for (const [index, job] of jobs.entries()) {
        options.onStart?.(index);
        await timePhase('guest: the step', () => runJob(vm, job, (chunk) => options.onOutput?.(index, chunk))).catch((err: unknown) => {
          // the VM dying under a step (a guest kernel it crashed, an agent it killed) is that step's failure
          throw err instanceof VmError && job.kind !== 'root' && !signal?.aborted ? stepError(job.step.location, job.text, err.message, { cause: err }) : err;
        });
        const commit = parseCommit(await timePhase('guest: commit', () => vm.mustStep('commit')));
        if (job.kind === 'root') checkUpperSize(commit.upperKiB, job.step.diskSize);
        layers.push(await timePhase('host: layer written', () => readLayer(job, index, commit)));
        options.onCommitted?.(index);
      }
      const caches = options.saveCaches ?? [];
      if (caches.length > 0) saved = parseCacheSave(await vm.mustStep('cache-save', { args: [...caches] }), caches.length, outBytes);
      stopping = startPhase('VM stop');
    },
  );
  stopping();
  // The scratch disk's bytes are in the layers now. Removed at once, its page cache (a 1 GB layer's
  // worth) goes, what the host has not written back yet never written, instead of counting against the
  // host's dirty limit while the layer is stored and copied into the output.
  await timePhase('scratch disk removed', () => rm(scratch, { force: true }));
  // read after the VM is gone: nothing writes the output disk any more
  for (const [index, { offset, bytes }] of saved.entries()) {
    await options.onCacheSaved?.(index, () => createReadStream(out, { start: offset, end: offset + bytes - 1 }));
  }

  /** The step's layer: its manifest read as untrusted input, file contents from the scratch disk's image. */
  async function readLayer(job: VmJob, index: number, { offset, bytes, newDirs }: Committed): Promise<LayerFile> {
    // the manifest on a file of its own (the reader takes a file's first bytes); contents stay on the scratch disk
    const manifest = join(tmp, `stage-manifest-${index}`);
    await copyRange(out, offset, bytes, manifest);
    const bounds = { clampMtime: options.clampMtime, newDirs, maxEntries };
    if (job.kind === 'root') {
      return writePackedLayer({ format: 'manifest', bytes }, { out: manifest, scratch }, join(tmp, `stage-layer-${index}.tar`), { ...bounds, diskSize: job.step.diskSize });
    }
    return writePackedLayer({ format: 'manifest', bytes }, { out: manifest, scratch }, join(tmp, `stage-layer-${index}.tar`), {
      ...bounds,
      source: `the build VM's output for ${job.text}`,
      contentLimitBytes: options.diskMiB * 1024 * 1024,
    }).catch((err: unknown) => {
      throw err instanceof VmError ? stepError(job.step.location, job.text, err.message, { cause: err }) : err;
    });
  }
  return layers;
}

/** The stage's spec.json step, which must then be its only job (copyToRoot is unpacked before any job runs). */
function rootStepOf(jobs: readonly VmJob[]): RootStep | undefined {
  const root = jobs.find((job) => job.kind === 'root');
  if (root && jobs.length > 1) throw new Error('a plan\'s root step must be its stage\'s only layer step');
  return root?.step as RootStep | undefined;
}

async function runJob(vm: BuildVm, job: VmJob, output: OutputSink): Promise<void> {
  switch (job.kind) {
    case 'run': {
      for (const input of job.unpack) {
        await vm.mustStep('unpack-input', { args: [input.dir], env: { DOCKVM_INPUT_AT: `${input.range.offset} ${input.range.size}` } });
      }
      // a secret reaches the guest (a tmpfs, over the agent channel) only for the step that mounts it,
      // and run-step removes it when the step ends: a later step, root in the VM, finds it nowhere
      for (const [id, path] of job.secrets) await vm.mustStep('secret', { args: [id], stdin: createReadStream(path) });
      const { step } = job;
      const result = await vm.step('run-step', {
        args: [...step.env, ...step.proxyEnv, '--', ...step.argv],
        env: {
          DOCKVM_RUN_USER: step.user,
          DOCKVM_RUN_WORKDIR: step.workdir,
          DOCKVM_RUN_NETWORK: job.network,
          DOCKVM_RUN_MOUNTS: job.mounts,
          ...maxProcessesEnv(),
        },
        onStdout: output,
        onStderr: output,
      });
      if (result.exitCode !== 0) throw runFailure(step.location, job.text, result);
      return;
    }
    case 'copy': {
      const { step, layout } = job;
      const result = await vm.step('copy-step', {
        env: {
          DOCKVM_COPY_AT: `${job.range.offset} ${job.range.size}`,
          DOCKVM_COPY_DEST: step.dest,
          DOCKVM_COPY_SINGLE: layout.single ?? '',
          DOCKVM_COPY_ROOT: layout.rootMetadata ? '1' : '0',
          DOCKVM_COPY_CHOWN: step.chown ?? '',
        },
      });
      if (result.exitCode !== 0) throw stepError(step.location, job.text, `the files could not be written at ${step.dest}${stderrTail(result.stderr)}`);
      return;
    }
    case 'root':
      await runRootScripts(vm, job.step, output);
      return;
    case 'workdir': {
      const { step } = job;
      const result = await vm.step('workdir-step', { env: { DOCKVM_WORKDIR_PATH: step.path, DOCKVM_WORKDIR_USER: step.user } });
      if (result.exitCode !== 0) throw stepError(step.location, job.text, `the directory could not be made${stderrTail(result.stderr)}`);
      return;
    }
  }
}

/** A failing RUN: its line, instruction, exit code and the end of its output; an OOM kill said as such. */
function runFailure(location: StepLocation, text: string, result: StepResult) {
  const bomb = processLimitHit(result.stderr);
  if (bomb) return stepError(location, text, bomb);
  if (oomKilled(result.stderr)) {
    return stepError(location, text, 'ran out of memory in the build VM (it was killed); give the VM more with --memory');
  }
  const code = result.exitCode === null ? describeExit(result) : `exit code ${result.exitCode}`;
  const tail = stderrTail(withoutOomMarker(result.stderr));
  return stepError(location, text, `the command failed (${code})${tail}`, result.exitCode === null ? {} : { exitCode: result.exitCode });
}

/** cache-save's "dockvm-cache=OFFSET BYTES" lines, one per directory, each inside the output disk. */
function parseCacheSave(result: StepResult, count: number, diskBytes: number): { offset: number; bytes: number }[] {
  const ranges = [...result.stdout.toString('latin1').matchAll(/^dockvm-cache=(\d+) (\d+)$/gm)].map((m) => ({ offset: Number(m[1]), bytes: Number(m[2]) }));
  if (ranges.length !== count || ranges.some(({ offset, bytes }) => !Number.isSafeInteger(offset) || bytes <= 0 || offset + bytes > diskBytes)) {
    throw new VmError(`the build VM did not report where its cache mounts' tars are${stderrTail(result.stderr)}`);
  }
  return ranges;
}

function parseCommit(result: StepResult): Committed {
  const text = result.stdout.toString('latin1');
  const split = text.indexOf('\n--\n');
  if (split < 0) throw new VmError(`the build VM's commit step said nothing readable${stderrTail(result.stderr)}`);
  const fields: Record<string, string> = {};
  for (const line of text.slice(0, split).split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) fields[line.slice(0, eq)] = line.slice(eq + 1).trim();
  }
  const offset = Number(fields['dockvm-manifest-offset']);
  const bytes = Number(fields['dockvm-manifest-bytes']);
  const upperKiB = Number(fields['dockvm-upper-kib']);
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(bytes) || bytes <= 0 || !Number.isSafeInteger(upperKiB) || upperKiB < 0) {
    throw new VmError(`the build VM did not report where a step's layer is${stderrTail(result.stderr)}`);
  }
  const newDirs = new Set(
    text
      .slice(split + 4)
      .split('\0')
      .filter((path) => path !== ''),
  );
  return { offset, bytes, upperKiB, newDirs };
}

/** `size` bytes at `offset` of `from`, as the file `to`. */
async function copyRange(from: string, offset: number, size: number, to: string): Promise<void> {
  const source = await open(from, 'r');
  try {
    const data = Buffer.alloc(size);
    const { bytesRead } = await source.read(data, 0, size, offset);
    if (bytesRead !== size) throw new VmError(`the build VM's output disk ends inside a layer's manifest (${bytesRead} of ${size} bytes at ${offset})`);
    const target = await open(to, 'w');
    try {
      await target.write(data);
    } finally {
      await target.close();
    }
  } finally {
    await source.close();
  }
}
