// The CLI entry. Parsing, exit codes and process.exit live only here and in src/cli/.
// Exit codes: 0 ok, 1 failure, 2 usage error. Errors print one line (no stack unless DEBUG is set).
import { Command, CommanderError } from 'commander';
import { installSignalHandlers } from '../cleanup.js';
import { DockvmError } from '../errors.js';
import { registerCommands } from './commands.js';
import { VERSION } from '../version.js';

export function createProgram(): Command {
  const program = new Command('dockvm')
    .description(
      'Build container image layers that need root, on hosts that give you none: a throwaway QEMU ' +
        'microVM over an image\'s layers. IMAGE is read like skopeo reads it: PATH (docker-archive .tar or ' +
        '.tar.gz), docker-archive:PATH[:NAME:TAG], oci:DIR[:REF], oci-archive:PATH[:REF], docker://REF.',
    )
    .version(VERSION)
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  registerCommands(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  installSignalHandlers();
  const program = createProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    process.exitCode = exitCodeFor(err);
    if (!(err instanceof CommanderError)) reportError(err);
  }
}

function exitCodeFor(err: unknown): number {
  if (err instanceof CommanderError) {
    // --help and --version end with exit code 0; every other commander error is a usage error.
    return err.exitCode === 0 ? 0 : 2;
  }
  if (err instanceof DockvmError) return err.exitCode;
  return 1;
}

function reportError(err: unknown): void {
  if (process.env.DEBUG) {
    console.error(err);
    return;
  }
  const system = describeSystemError(err);
  if (system) {
    process.stderr.write(`dockvm: ${system}\n`);
    return;
  }
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`dockvm: ${message}\n`);
  if (err instanceof DockvmError && 'problems' in err && Array.isArray(err.problems)) {
    for (const problem of err.problems) process.stderr.write(`  - ${problem}\n`);
  }
  if (!(err instanceof DockvmError)) {
    process.stderr.write('(an unexpected error: run with DEBUG=1 for the stack trace)\n');
  }
}

/** The host errors a user can act on (a full disk, a permission), said plainly with what to do. */
function describeSystemError(err: unknown): string | undefined {
  const { code, path } = (err ?? {}) as { code?: string; path?: string };
  const where = path ? ` (${path})` : '';
  switch (code) {
    case 'ENOSPC':
      return `no space left on device${where}: free some space, or point -o (or TMPDIR for temp files) elsewhere; nothing was written`;
    case 'EDQUOT':
      return `disk quota exceeded${where}: free some space or write elsewhere; nothing was written`;
    case 'EACCES':
    case 'EPERM':
      return `permission denied${where}: check who owns it, or write elsewhere`;
    case 'EROFS':
      return `read-only file system${where}: write elsewhere`;
    default:
      return undefined;
  }
}
