// dockvm shell: a root shell (or one command) in the build VM over an image's layers, mounted read-only
// as overlay lowers with a throwaway upper on a scratch disk as big as a build's — for debugging a
// runAsRoot script. The command runs exactly as a runAsRoot script would (chroot, namespaces, the image's
// Env and PATH, the same bash: src/build/interpreter.ts, room to write as much); nothing it changes survives.
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { withTempDir } from '../cleanup.js';
import { DEFAULT_DISK_SIZE } from '../spec/schema.js';
import { openImage } from '../transport/index.js';
import type { Platform } from '../image/config.js';
import { checkLowerCount, withBuildVm } from './build-vm.js';
import { lowersFor } from './lowers.js';
import { scriptEnvironment } from './config.js';
import { commandLaunch, interactiveShellLaunch, runStep } from './interpreter.js';
import { platformOf, runnableRow } from './platform.js';
import { requireGuestPieces } from '../vm/guest-platform.js';
import { toWritable } from '../vm/index.js';
import { createUpperDisk } from './vm-layer.js';

export interface ShellOptions {
  /** the command to run, found in the image's PATH; empty: the bash a runAsRoot script gets (the image's /bin/bash, else the bundled one) */
  command: readonly string[];
  memoryMiB?: number;
  network?: boolean;
  /** the image's platform to run: picked from an index; another platform's image is an error (default: the image's) */
  platform?: Platform;
  env?: Readonly<Record<string, string>>;
  stdin: Readable;
  stdout: Writable;
  stderr: Writable;
  /** run on a terminal of this size (raw stdin; window size changes passed on through `onResize`) */
  tty?: { rows: number; cols: number; onResize(resize: (rows: number, cols: number) => void): void };
}

/** Returns the command's exit status (128 + the signal number when a signal ended it). */
export async function shell(reference: string, options: ShellOptions): Promise<number> {
  const image = await openImage(reference, options.platform ? { platform: options.platform } : {});
  try {
    const row = runnableRow(platformOf(image.config), reference);
    // an input error (too many layers) first, then what this host lacks for the VM, both before any lower is made
    checkLowerCount(image.layers.length, reference);
    await requireGuestPieces(row);
    const lowers = await lowersFor(image, reference);
    return await withTempDir('shell', async (tmp) => {
      const scratch = join(tmp, 'scratch.ext4');
      await createUpperDisk(scratch, DEFAULT_DISK_SIZE);
      const vmOptions = { architecture: row.architecture, ...(options.memoryMiB ? { memoryMiB: options.memoryMiB } : {}), network: options.network ?? false, discard: true };
      return withBuildVm({ lowers, scratch }, vmOptions, async (vm) => {
        const launch = options.command.length > 0 ? commandLaunch(options.command) : interactiveShellLaunch();
        const { args } = runStep(scriptEnvironment(image.config.config?.Env, options.env ?? {}), launch);
        if (options.tty) {
          await vm.mustStep('mount');
          const running = vm.spawnStep('run', { args, tty: options.tty, stdin: options.stdin, onStdout: toWritable(options.stdout) });
          options.tty.onResize((rows, cols) => running.resize(rows, cols));
          return exitStatus(await running.result);
        }
        const result = await vm.mountAndRun({ args, stdin: options.stdin, onStdout: toWritable(options.stdout), onStderr: toWritable(options.stderr) });
        return exitStatus(result);
      });
    });
  } finally {
    await image.close();
  }
}

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGTERM: 15 };

function exitStatus(result: { exitCode: number | null; signal?: string }): number {
  if (result.exitCode !== null) return result.exitCode;
  return 128 + (SIGNALS[result.signal ?? ''] ?? 1);
}
