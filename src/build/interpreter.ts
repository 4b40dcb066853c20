// Which program runs what inside the image. runAsRoot is a bash script, as nixpkgs' manual says (nixpkgs
// runs it with its own bash): the image's /bin/bash, else the bundled static bash, which the build VM
// mounts at /.dockvm from outside the layer; `set -e` as a Dockerfile RUN has it. A script whose first
// line is a shebang runs with that interpreter instead, as the kernel would run the file; a shebang
// naming a shell the image lacks (nixpkgs scripts start with `#!/nix/store/…/bash`) falls back to bash
// with a notice. `dockvm shell` offers the same bash; a command after `--` runs as given, found in the
// image's PATH. A later Containerfile RUN passes its own `/bin/sh -c` (or SHELL) as a command.
//
// The host decides; the guest (vm/run-in-image.c, launch) runs the first alternative whose program the
// image has, and reports one that exists but cannot be executed rather than running another.

/** The bundled bash inside the image: guest.sh mounts src/vm/guest-tools.ts's GUEST_SHELL_DIR at /.dockvm. */
export const BUNDLED_BASH = '/.dockvm/bash';
/** The image's own bash, which a runAsRoot script and `dockvm shell` prefer. */
export const IMAGE_BASH = '/bin/bash';
/** Where guest.sh writes a script (DOCKVM_SCRIPT) for its interpreter to read: the run's own /dev. */
const SCRIPT_DIR = '/dev/pipes';

export interface Alternative {
  /** an absolute path in the image, or a name found in its PATH */
  readonly program: string;
  readonly args: readonly string[];
  /** said on stderr when this alternative is the one that runs */
  readonly notice?: string;
}

/** What the guest's run step runs: the first alternative whose program the image has (the last runs regardless). */
export interface Launch {
  readonly alternatives: readonly Alternative[];
  /** a script the guest writes to /dev/pipes/NAME before anything runs */
  readonly script?: { readonly name: string; readonly text: string };
}

export interface Shebang {
  readonly interpreter: string;
  /** the rest of the line, one argument, as the kernel passes it */
  readonly arg?: string;
}

/** The `#!` line of a script, parsed as Linux does (binfmt_script); undefined without one. */
export function parseShebang(script: string): Shebang | undefined {
  if (!script.startsWith('#!')) return undefined;
  const end = script.indexOf('\n');
  const line = (end < 0 ? script.slice(2) : script.slice(2, end)).replace(/^[ \t]+|[ \t\r]+$/g, '');
  if (line === '') return undefined;
  const space = line.search(/[ \t]/);
  const interpreter = space < 0 ? line : line.slice(0, space);
  const arg = space < 0 ? '' : line.slice(space).replace(/^[ \t]+/, '');
  // the kernel resolves a relative interpreter against the cwd, which is "/" here
  const absolute = interpreter.startsWith('/') ? interpreter : `/${interpreter}`;
  return arg === '' ? { interpreter: absolute } : { interpreter: absolute, arg };
}

const SHELLS = new Set(['sh', 'bash']);
const basename = (path: string) => path.slice(path.lastIndexOf('/') + 1);

/** Whether a shebang names a POSIX shell or bash (directly or through env), so that bash can stand in for it. */
function namesShell(shebang: Shebang): boolean {
  const program = basename(shebang.interpreter);
  if (SHELLS.has(program)) return true;
  return program === 'env' && shebang.arg !== undefined && SHELLS.has(basename(shebang.arg.split(/[ \t]/)[0]!));
}

/** The image's bash, else the bundled one, with `args`. */
function bash(args: readonly string[], notices: { image?: string; bundled?: string } = {}): Alternative[] {
  return [
    { program: IMAGE_BASH, args, ...(notices.image ? { notice: notices.image } : {}) },
    { program: BUNDLED_BASH, args, ...(notices.bundled ? { notice: notices.bundled } : {}) },
  ];
}

/** How a script (runAsRoot) runs; `name` names it in the interpreter's messages and $0 (/dev/pipes/NAME). */
export function scriptLaunch(text: string, name = 'runAsRoot'): Launch {
  const file = `${SCRIPT_DIR}/${name}`;
  const script = { name, text };
  const shebang = parseShebang(text);
  if (!shebang) return { alternatives: bash(['-e', file]), script };
  const own: Alternative = { program: shebang.interpreter, args: [...(shebang.arg !== undefined ? [shebang.arg] : []), file] };
  if (!namesShell(shebang)) return { alternatives: [own], script };
  const lacks = `dockvm: ${name}'s shebang names ${shebang.interpreter}${shebang.arg !== undefined ? ` ${shebang.arg}` : ''}, which the image lacks: running it with`;
  return { alternatives: [own, ...bash(['-e', file], { image: `${lacks} the image's ${IMAGE_BASH}`, bundled: `${lacks} dockvm's bundled bash` })], script };
}

/** `dockvm shell` without a command: the bash a runAsRoot script gets. */
export function interactiveShellLaunch(): Launch {
  return {
    alternatives: bash([], { bundled: `dockvm: the image has no ${IMAGE_BASH}; this is dockvm's bundled bash, the one a runAsRoot script gets` }),
  };
}

/** A command run as given (`dockvm shell IMAGE -- CMD…`, a Containerfile RUN): its program found in the image's PATH. */
export function commandLaunch(argv: readonly string[]): Launch {
  if (argv.length === 0) throw new RangeError('commandLaunch: empty command');
  return { alternatives: [{ program: argv[0]!, args: argv.slice(1) }] };
}

/** The run step's arguments after "--": each alternative as NOTICE COUNT PROGRAM ARG… (vm/run-in-image.c's launcher). */
export function launchArguments(launch: Launch): string[] {
  return launch.alternatives.flatMap((alternative) => [alternative.notice ?? '-', String(alternative.args.length + 1), alternative.program, ...alternative.args]);
}

/** The run step's DOCKVM_* parameters for `launch`. */
export function launchParameters(launch: Launch): Record<string, string> {
  return launch.script ? { DOCKVM_SCRIPT_NAME: launch.script.name, DOCKVM_SCRIPT: launch.script.text } : {};
}

export interface LaunchFailure {
  /** the program that exists (or not) but could not be executed */
  readonly program: string;
  readonly exitCode: number;
  /** ENOEXEC: a program of another platform (or no program at all) */
  readonly execFormat: boolean;
}

/** What the guest's launcher said when it could not execute the program it chose (vm/run-in-image.c), if it did. */
export function launchFailure(stderr: string): LaunchFailure | undefined {
  const match = /^dockvm: cannot execute (.+) in the image \(exit (\d+)\)$/m.exec(stderr);
  if (!match) return undefined;
  return { program: match[1]!, exitCode: Number(match[2]), execFormat: /Exec format error/.test(stderr) };
}

/** The guest's run step for `launch` in `environment` (NAME=VALUE…): its arguments and parameters. */
export function runStep(environment: readonly string[], launch: Launch): { args: string[]; env: Record<string, string> } {
  return { args: [...environment, '--', ...launchArguments(launch)], env: launchParameters(launch) };
}


/** The image's shell paths a build relies on: /bin/sh, /bin/bash, and a script's shebang interpreter. */
export function imageShells(script: string | null): string[] {
  const shebang = script === null ? undefined : parseShebang(script);
  return [...new Set(['/bin/sh', IMAGE_BASH, ...(shebang ? [shebang.interpreter] : [])])];
}
