// dockvm shell IMAGE [-- CMD…]: a root shell in the build VM over an image, to debug a runAsRoot script.
import type { Command } from 'commander';
import { Readable, Writable } from 'node:stream';
import { installSignalHandlers } from '../cleanup.js';
import { UsageError } from '../errors.js';
import { printJson } from './io.js';
import { parsePlatform } from '../frontend/containerfile/platform.js';

export function registerShell(program: Command): void {
  program
    .command('shell')
    .description(
      'A root shell in the build VM over IMAGE\'s layers, set up exactly as a runAsRoot script sees them ' +
        '(chroot, fresh namespaces, /proc /dev /sys, the image\'s Env, HOME=/root), with the bash a runAsRoot ' +
        'script gets: the image\'s /bin/bash, else dockvm\'s bundled bash. Changes are thrown away. With ' +
        '-- CMD, run CMD instead, found in the image\'s PATH: its output streams through and dockvm exits ' +
        'with its exit code. The VM is the image\'s platform\'s machine: an arm64 image runs in an emulated ' +
        'arm64 VM on an amd64 host (and the other way round), KVM only when the host is of that architecture.',
    )
    .argument('<image>', 'PATH, docker-archive:PATH[:NAME:TAG], oci:DIR[:REF], oci-archive:PATH[:REF] or docker://REF')
    .argument('[command...]', 'a command to run instead of a shell (put it after --)')
    .option('--network', 'give the VM outbound network (user-mode, through passt: not the host\'s loopback unless DOCKVM_HOST_LOOPBACK=1)')
    .option('--memory <mib>', 'VM memory in MiB', (value) => Number(value), 512)
    .option('--platform <os/arch[/variant]>', "the image's platform to run (picked from a multi-platform index; default: the image's own, or this host's from an index)")
    .option('--json', 'with -- CMD: print {command, exitCode, stdout, stderr} as one JSON document instead of streaming')
    .action(async (reference: string, command: string[], options: { network?: boolean; memory: number; json?: boolean; platform?: string }) => {
      installSignalHandlers();
      const platform = options.platform === undefined ? undefined : parsePlatform(options.platform);
      if (options.platform !== undefined && platform === undefined) throw new UsageError(`--platform ${options.platform} is not a platform: write os/arch[/variant], e.g. linux/arm64`);
      const { shell } = await import('../build/shell.js'); // loaded on use: faster start-up
      const common = { memoryMiB: options.memory, network: options.network ?? false, ...(platform ? { platform } : {}) };
      if (options.json) {
        if (command.length === 0) throw new UsageError('--json needs a command to run: dockvm shell IMAGE --json -- CMD…');
        const out = new Collector();
        const err = new Collector();
        // no stdin: --json runs a command to completion, it does not talk to it
        const exitCode = await shell(reference, { command, ...common, stdin: Readable.from([]), stdout: out, stderr: err });
        printJson({ command, exitCode, stdout: out.text(), stderr: err.text() });
        process.exitCode = exitCode;
        return;
      }
      const terminal = process.stdin.isTTY && process.stdout.isTTY;
      if (terminal) process.stdin.setRawMode(true);
      try {
        process.exitCode = await shell(reference, {
          command,
          ...common,
          stdin: process.stdin,
          stdout: process.stdout,
          stderr: process.stderr,
          ...(terminal
            ? {
                tty: {
                  rows: process.stdout.rows,
                  cols: process.stdout.columns,
                  onResize: (resize: (rows: number, cols: number) => void) => process.stdout.on('resize', () => resize(process.stdout.rows, process.stdout.columns)),
                },
              }
            : {}),
        });
      } finally {
        if (terminal) process.stdin.setRawMode(false);
        // the agent client read our stdin; a TTY stdin left open would keep dockvm from exiting
        process.stdin.destroy();
      }
    });
}

/** Keeps what a command wrote, for --json. */
class Collector extends Writable {
  readonly #chunks: Buffer[] = [];

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: () => void): void {
    this.#chunks.push(chunk);
    callback();
  }

  text(): string {
    return Buffer.concat(this.#chunks).toString('utf8');
  }
}
