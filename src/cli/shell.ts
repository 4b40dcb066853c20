// dockvm shell IMAGE [-- CMD…]: a root shell in the build VM over an image, to debug a runAsRoot script.
import type { Command } from 'commander';
import { installSignalHandlers } from '../cleanup.js';

export function registerShell(program: Command): void {
  program
    .command('shell')
    .description(
      'A root shell in the build VM over IMAGE\'s layers, set up exactly as a runAsRoot script sees them ' +
        '(chroot, fresh namespaces, /proc /dev /sys, the image\'s Env, HOME=/root). Changes are thrown away. ' +
        'With -- CMD, run CMD instead: its output streams through and dockvm exits with its exit code.',
    )
    .argument('<image>', 'PATH, docker-archive:PATH[:NAME:TAG], oci:DIR[:REF], oci-archive:PATH[:REF] or docker://REF')
    .argument('[command...]', 'a command to run instead of a shell (put it after --)')
    .option('--network', 'give the VM outbound network (QEMU user-mode networking)')
    .option('--memory <mib>', 'VM memory in MiB', (value) => Number(value), 512)
    .action(async (reference: string, command: string[], options: { network?: boolean; memory: number }) => {
      installSignalHandlers();
      const { shell } = await import('../build/shell.js'); // loaded on use: faster start-up
      const terminal = process.stdin.isTTY && process.stdout.isTTY;
      if (terminal) process.stdin.setRawMode(true);
      try {
        process.exitCode = await shell(reference, {
          command,
          memoryMiB: options.memory,
          network: options.network ?? false,
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
