// The build VM: an image's layers mounted as overlay lowers (src/build/lowers.ts), plus the disks a step
// needs, and the guest side (vm/build/guest.sh) run one step at a time through the agent. run-as-root,
// export --engine vm and shell all stand on it. Disks are named by virtio serial, so the guest never
// guesses /dev/vdX.
import { readFile } from 'node:fs/promises';
import { DockvmError, VmError, stderrTail } from '../errors.js';
import { assetPath } from '../vm/paths.js';
import type { Readable } from 'node:stream';
import { startVm, type RunningCommand, type Vm, type VmDisk } from '../vm/index.js';

export interface BuildVmDisks {
  /** images of the lowers, bottom layer first (src/build/lowers.ts): squashfs, or ext4 when named *.ext4 */
  lowers: readonly string[];
  /** ext4 scratch disk holding the overlay's upper and work dirs */
  scratch?: string;
  /** a tar to unpack over the root before anything runs (copyToRoot) */
  copy?: string;
  /** a raw disk the guest writes its output tar onto */
  out?: string;
  /** a raw disk of tars the guest reads by offset (a Containerfile's COPY inputs: src/executor/) */
  inputs?: string;
}

export interface BuildVmOptions {
  memoryMiB?: number;
  network?: boolean;
  /** aborting kills the VM */
  signal?: AbortSignal;
}

export interface StepOptions {
  /** arguments after the step name */
  args?: readonly string[];
  /** more DOCKVM_* parameters for this step */
  env?: Readonly<Record<string, string>>;
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
  /** the step's stdin (default: empty) */
  stdin?: Readable;
}

export interface StepResult {
  exitCode: number | null;
  signal?: string;
  stdout: Buffer;
  stderr: string;
}

const GUEST_PATH = 'PATH=/usr/sbin:/usr/bin:/sbin:/bin';
/** how the lower images of layers with POSIX ACLs are named (the others are squashfs) */
export const EXT4_LOWER_SUFFIX = '.ext4';
/** how much of a step's output is kept for results and error messages */
const KEEP_STDOUT = 16 * 1024 * 1024;
const KEEP_STDERR = 64 * 1024;

export class BuildVm {
  private constructor(
    readonly vm: Vm,
    private readonly script: string,
    private readonly params: Readonly<Record<string, string>>,
  ) {}

  static async start(disks: BuildVmDisks, options: BuildVmOptions = {}): Promise<BuildVm> {
    const vmDisks: VmDisk[] = [];
    const lowerNames: string[] = [];
    const ext4Lowers: string[] = [];
    disks.lowers.forEach((path, i) => {
      vmDisks.push({ path, readOnly: true, name: `lower${i}` });
      lowerNames.unshift(`lower${i}`); // overlayfs wants the top layer first
      if (path.endsWith(EXT4_LOWER_SUFFIX)) ext4Lowers.push(`lower${i}`);
    });
    const params: Record<string, string> = { DOCKVM_LOWERS: lowerNames.join(' '), DOCKVM_EXT4_LOWERS: ext4Lowers.join(' ') };
    for (const [key, path, readOnly] of [
      ['scratch', disks.scratch, false],
      ['copy', disks.copy, true],
      ['out', disks.out, false],
      ['inputs', disks.inputs, true],
    ] as const) {
      if (path === undefined) continue;
      vmDisks.push({ path, readOnly, name: key });
      params[`DOCKVM_${key.toUpperCase()}`] = key;
    }
    const script = await readFile(assetPath('vm', 'build', 'guest.sh'), 'utf8');
    const vm = await startVm({
      disks: vmDisks,
      ...(options.memoryMiB !== undefined ? { memoryMiB: options.memoryMiB } : {}),
      ...(options.network !== undefined ? { network: options.network } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    });
    return new BuildVm(vm, script, params);
  }

  /** Run one guest step; its stdout and stderr are kept (bounded) and passed to the callbacks. */
  async step(name: string, options: StepOptions = {}): Promise<StepResult> {
    const stdout: Buffer[] = [];
    let stdoutBytes = 0;
    let stderr = '';
    const result = await this.vm.exec({
      ...this.command(name, options),
      ...(options.stdin ? { stdin: options.stdin } : {}),
      onStdout: (chunk) => {
        if (stdoutBytes < KEEP_STDOUT) {
          stdout.push(chunk);
          stdoutBytes += chunk.length;
        }
        options.onStdout?.(chunk);
      },
      onStderr: (chunk) => {
        stderr = (stderr + chunk.toString()).slice(-KEEP_STDERR);
        options.onStderr?.(chunk);
      },
    });
    return { exitCode: result.exitCode, ...(result.signal ? { signal: result.signal } : {}), stdout: Buffer.concat(stdout), stderr };
  }

  /** Start a step on a terminal (dockvm shell): output comes through `onStdout`, the caller owns the pty. */
  spawnStep(name: string, options: StepOptions & { tty: { rows: number; cols: number } }): RunningCommand {
    return this.vm.spawn({
      ...this.command(name, options),
      tty: options.tty,
      ...(options.stdin ? { stdin: options.stdin } : {}),
      ...(options.onStdout ? { onStdout: options.onStdout } : {}),
    });
  }

  /** The agent command that runs guest.sh's step `name`. */
  private command(name: string, options: StepOptions): { argv: string[]; env: string[] } {
    return {
      argv: ['/bin/sh', '-c', this.script, 'dockvm-guest', name, ...(options.args ?? [])],
      env: [GUEST_PATH, ...Object.entries({ ...this.params, ...options.env }).map(([k, v]) => `${k}=${v}`)],
    };
  }

  /** Run a step that must succeed: a failure is a VmError naming the step and the end of its stderr. */
  async mustStep(name: string, options: StepOptions = {}): Promise<StepResult> {
    const result = await this.step(name, options);
    if (result.exitCode !== 0) {
      throw new VmError(`build VM step "${name}" failed (${describeExit(result)})${stderrTail(result.stderr)}`);
    }
    return result;
  }

  async shutdown(): Promise<void> {
    await this.vm.shutdown();
  }

  async kill(): Promise<void> {
    await this.vm.kill();
  }
}

export function describeExit(result: { exitCode: number | null; signal?: string }): string {
  return result.exitCode === null ? `killed by ${result.signal ?? 'a signal'}` : `exit code ${result.exitCode}`;
}

/** Run `fn` with a started build VM, shutting it down afterwards (killing it when fn failed). */
export async function withBuildVm<T>(disks: BuildVmDisks, options: BuildVmOptions, fn: (vm: BuildVm) => Promise<T>): Promise<T> {
  const vm = await BuildVm.start(disks, options);
  try {
    const result = await fn(vm);
    await vm.shutdown();
    return result;
  } catch (err) {
    await vm.kill();
    // A timeout or Ctrl-C surfaces as whatever the VM did when it was killed; say what really happened.
    const reason: unknown = options.signal?.aborted ? options.signal.reason : undefined;
    throw reason instanceof DockvmError ? reason : err;
  }
}
