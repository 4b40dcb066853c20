// The build VM: an image's layers mounted as read-only overlay lowers (src/build/lowers.ts), plus the
// disks a step needs, and the guest side (vm/build/guest.sh) run one step at a time through the agent.
// run-as-root, export --engine vm and shell all stand on it. Disks are found by name (src/vm/qemu.ts), so
// the guest never guesses /dev/sdX.
import { readFile } from 'node:fs/promises';
import { DockvmError, UsageError, VmError, stderrTail } from '../errors.js';
import { assetPath } from '../vm/paths.js';
import type { Readable } from 'node:stream';
import { partsOf, startVm, type OutputSink, type RunningCommand, type Vm, type VmDisk } from '../vm/index.js';
import type { Architecture } from '../vm/architectures.js';

/** A read-only filesystem image the guest mounts as one overlay lower. */
export interface LowerImage {
  readonly path: string;
  /** its filesystem type, as the guest kernel names it (mount -t) */
  readonly fsType: string;
}

export interface BuildVmDisks {
  /** the lowers, bottom layer first (src/build/lowers.ts): squashfs, or ext4 for layers with POSIX ACLs */
  lowers: readonly LowerImage[];
  /** ext4 scratch disk holding the overlay's upper and work dirs */
  scratch?: string;
  /** a tar to unpack over the root before anything runs (copyToRoot) */
  copy?: string;
  /** a raw disk the guest writes its output tar onto */
  out?: string;
  /** a raw disk of tars the guest reads by offset (a Containerfile's COPY inputs: src/executor/) */
  inputs?: string;
}

/**
 * The most layers a build VM stacks: Docker's overlay2 limit, so that any image Docker runs works here
 * too; tested at this count. Well inside overlayfs' own limits: 500 lowers, and a lowerdir option of
 * one page (guest.sh mounts lowers at /l/N: the option for 128 of them is 785 bytes).
 */
export const MAX_LOWERS = 128;

/**
 * Up to this many lowers are a disk each, as fast as a disk gets. More lowers share one disk (their
 * image files end to end, read in place), and the guest mounts each through a loop device at its offset:
 * every disk is a SCSI LUN the guest probes as it is hot-added, and one disk is one probe.
 */
export const DISK_PER_LOWER_MAX = 16;

export interface BuildVmOptions {
  /** the VM's architecture: the image's platform when its programs run (default: the host's) */
  architecture?: Architecture;
  memoryMiB?: number;
  network?: boolean;
  /** aborting kills the VM */
  signal?: AbortSignal;
  /** nothing the VM wrote is kept (dockvm shell): withBuildVm kills it at the end instead of powering it off */
  discard?: boolean;
}

export interface StepOptions {
  /** arguments after the step name */
  args?: readonly string[];
  /** more DOCKVM_* parameters for this step */
  env?: Readonly<Record<string, string>>;
  onStdout?: OutputSink;
  onStderr?: OutputSink;
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
/** the line guest.sh's mount-run ends stderr with when its mount fails */
const MOUNT_FAILED = 'dockvm-guest: the mount step failed';
/** how the lower images of layers with POSIX ACLs are named (the others are squashfs) */
export const EXT4_LOWER_SUFFIX = '.ext4';
/** how much of a step's output is kept for results and error messages */
const KEEP_STDOUT = 16 * 1024 * 1024;
const KEEP_STDERR = 64 * 1024;

export interface LowersOptions {
  /** what the error for too many layers suggests instead */
  instead?: string;
}

/** Refuses, before anything is converted or booted, an image with more layers than the build VM stacks. */
export function checkLowerCount(count: number, source: string, options: LowersOptions = {}): void {
  if (count <= MAX_LOWERS) return;
  const instead = options.instead ?? 'rebuild it with fewer layers (nixpkgs buildLayeredImage: maxLayers)';
  throw new UsageError(`${source} has ${count} layers; the build VM stacks at most ${MAX_LOWERS} (Docker's overlay2 limit): ${instead}`, { source });
}

export class BuildVm {
  private constructor(
    readonly vm: Vm,
    private readonly script: string,
    private readonly params: Readonly<Record<string, string>>,
  ) {}

  static async start(disks: BuildVmDisks, options: BuildVmOptions = {}): Promise<BuildVm> {
    checkLowerCount(disks.lowers.length, 'the build');
    const vmDisks: VmDisk[] = [];
    let lowers: string[];
    if (disks.lowers.length <= DISK_PER_LOWER_MAX) {
      lowers = disks.lowers.map((lower, i) => {
        vmDisks.push({ path: lower.path, readOnly: true, name: `lower${i}` });
        return `${lower.fsType}:lower${i}`;
      });
    } else {
      const parts = await partsOf(disks.lowers.map((lower) => lower.path));
      vmDisks.push({ parts, name: 'lowers' });
      lowers = disks.lowers.map((lower, i) => `${lower.fsType}:lowers@${parts[i]!.offset}+${parts[i]!.size}`);
    }
    const params: Record<string, string> = { DOCKVM_LOWERS: lowers.join(' ') };
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
      ...(options.architecture !== undefined ? { architecture: options.architecture } : {}),
      ...(options.memoryMiB !== undefined ? { memoryMiB: options.memoryMiB } : {}),
      ...(options.network !== undefined ? { network: options.network } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    });
    return new BuildVm(vm, script, params);
  }

  /** Run one guest step; its stdout and stderr are kept (bounded) and passed to the callbacks. */
  async step(name: string, options: StepOptions = {}, command = this.command(name, options)): Promise<StepResult> {
    const stdout: Buffer[] = [];
    let stdoutBytes = 0;
    let stderr = '';
    const result = await this.vm.exec({
      ...command,
      ...(options.stdin ? { stdin: options.stdin } : {}),
      onStdout: (chunk) => {
        if (stdoutBytes < KEEP_STDOUT) {
          stdout.push(chunk);
          stdoutBytes += chunk.length;
        }
        return options.onStdout?.(chunk);
      },
      onStderr: (chunk) => {
        stderr = (stderr + chunk.toString()).slice(-KEEP_STDERR);
        return options.onStderr?.(chunk);
      },
    });
    return { exitCode: result.exitCode, ...(result.signal ? { signal: result.signal } : {}), stdout: Buffer.concat(stdout), stderr };
  }

  /**
   * guest.sh's mount step, then its run step with `options`, in one exec (one fewer for dockvm shell -- CMD):
   * a mount that fails is the VmError mustStep('mount') gives; the command's own failure is its result.
   */
  async mountAndRun(options: StepOptions): Promise<StepResult> {
    const result = await this.step('mount-run', options, this.agentMountRun(options));
    if (result.exitCode !== 0 && result.stderr.endsWith(`${MOUNT_FAILED}\n`)) {
      throw new VmError(`build VM step "mount" failed (${describeExit(result)})${stderrTail(result.stderr.slice(0, -MOUNT_FAILED.length - 1))}`);
    }
    return result;
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

  /**
   * mount-run as the agent's own subcommand (vm/agent.c): no shell, no parse of guest.sh. Not for a
   * build with copyToRoot to unpack, which guest.sh's mount-run does with GNU tar.
   */
  private agentMountRun(options: StepOptions): { argv: string[]; env: string[] } | undefined {
    if ({ ...this.params, ...options.env }.DOCKVM_COPY !== undefined) return undefined;
    const { env } = this.command('mount-run', options);
    return { argv: ['/bin/dockvm-agent', 'mount-run', ...(options.args ?? [])], env };
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
  // A timeout or Ctrl-C surfaces as whatever the VM did when it was killed (while booting too); say what
  // really happened.
  const why = (err: unknown): unknown => {
    const reason: unknown = options.signal?.aborted ? options.signal.reason : undefined;
    return reason instanceof DockvmError ? reason : err;
  };
  const vm = await BuildVm.start(disks, options).catch((err: unknown) => {
    throw why(err);
  });
  try {
    const result = await fn(vm);
    await (options.discard ? vm.kill() : vm.shutdown());
    return result;
  } catch (err) {
    await vm.kill();
    throw why(err);
  }
}
