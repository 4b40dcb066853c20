// dockvm's error classes. Commands throw these; only the CLI entry turns them into exit codes.
// Each carries the context a person needs (the archive, the entry, the digest, the command) and keeps
// the underlying error as `cause`. Messages say what failed, on what, and what to try.

export interface ErrorContext {
  cause?: unknown;
  /** an archive, spec or output path */
  source?: string;
  /** a tar entry path (binary string) */
  entry?: string;
  digest?: string;
  command?: string;
  exitCode?: number;
  field?: string;
}

export class DockvmError extends Error {
  /** process exit code the CLI uses for this error */
  readonly exitCode: number = 1;
  readonly context: ErrorContext;

  constructor(message: string, context: ErrorContext = {}) {
    super(message, context.cause === undefined ? undefined : { cause: context.cause });
    this.name = new.target.name;
    this.context = context;
  }
}

/** Bad command-line usage: exit code 2. */
export class UsageError extends DockvmError {
  override readonly exitCode = 2;
}

/** An image reference that cannot be parsed or resolved. */
export class ImageReferenceError extends DockvmError {}

/** An image archive or layout that is malformed: a missing file, bad JSON, a layer the manifest names but the archive lacks. */
export class ImageFormatError extends DockvmError {}

/** A blob whose bytes do not hash to the digest that names it. */
export class DigestMismatchError extends DockvmError {}

/** A tar stream that is truncated, corrupt, or uses an unsupported entry type. */
export class TarFormatError extends DockvmError {}

/** A tar entry that would write outside its root: an absolute path, "..", or a write through a symlink. */
export class UnsafeTarEntryError extends DockvmError {}

/** A spec.json that fails validation; `problems` lists every problem found, each naming its field. */
export class SpecError extends DockvmError {
  readonly problems: readonly string[];

  constructor(message: string, problems: readonly string[], context: ErrorContext = {}) {
    super(message, context);
    this.problems = problems;
  }
}

/** The VM could not be started, died, or timed out. */
export class VmError extends DockvmError {}

/** A command inside the VM (the runAsRoot script) failed. */
export class ScriptError extends DockvmError {}

/** A registry request failed. */
export class RegistryError extends DockvmError {}

/** Something the host lacks (qemu, a kernel, mkfs.ext4): the message says what to install. */
export class MissingToolError extends DockvmError {}

/** The last lines of a command's stderr, to end an error message with. */
export function stderrTail(stderr: string, lines = 15): string {
  const kept = stderr.trimEnd().split('\n').slice(-lines).join('\n');
  return kept ? `; its stderr ends with:\n${kept}` : '';
}

/** An image of a platform the build VM cannot run (or a spec that names another platform than its base). */
export class PlatformError extends DockvmError {}
