// What a stage's instructions see while they are turned into steps: the variables in scope (the
// image's Env, then ARGs and ENVs in the order they come: the last one set wins, as in BuildKit),
// the ARGs the stage declared (RUN's history entry lists them), the image config so far.
import type { ContainerConfig } from '../../image/config.js';
import { applyConfigChange, envName, type ImageState } from '../../plan/config-change.js';
import type { ConfigChange } from '../../plan/plan.js';

export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
export const DEFAULT_SHELL = ['/bin/sh', '-c'];

export interface DeclaredArg {
  key: string;
  /** undefined: declared without a value and none given */
  value?: string;
}

export class StageState {
  /** the variables expansion and RUN see, in order */
  readonly vars = new Map<string, string>();
  readonly declaredArgs: DeclaredArg[] = [];
  image: ImageState;
  /** a CMD came earlier in this stage (then ENTRYPOINT keeps it) */
  cmdSet = false;

  constructor(base: ImageState) {
    this.image = base;
    for (const item of base.config.Env ?? []) this.vars.set(envName(item), item.slice(envName(item).length + 1));
  }

  get config(): ContainerConfig {
    return this.image.config;
  }

  lookup = (name: string): string | undefined => this.vars.get(name);

  apply(change: ConfigChange): void {
    this.image = applyConfigChange(this.image, change);
    if (change.op === 'env') for (const [name, value] of change.vars) this.vars.set(name, value);
  }

  /** An ARG with a value is a variable from here on (not in the image config). */
  declareArg(arg: DeclaredArg): void {
    this.declaredArgs.push(arg);
    if (arg.value !== undefined) this.vars.set(arg.key, arg.value);
  }

  /** The environment a RUN gets, NAME=value. */
  environment(): string[] {
    return [...this.vars].map(([name, value]) => `${name}=${value}`);
  }

  workdir(): string {
    return this.config.WorkingDir || '/';
  }

  shell(): string[] {
    const shell = this.config.Shell as string[] | undefined;
    return shell && shell.length > 0 ? shell : DEFAULT_SHELL;
  }

  /**
   * BuildKit's runCommandString prefix: "|N k=v …" for the ARGs the stage declared (each once, at its
   * first place, with its value now), so a RUN's history says which build args it ran with.
   */
  argsPrefix(): string {
    const seen = new Map<string, string>();
    for (const arg of this.declaredArgs) seen.set(arg.key, `${arg.key}=${this.vars.get(arg.key) ?? arg.value ?? ''}`);
    return seen.size === 0 ? '' : `|${seen.size} ${[...seen.values()].join(' ')} `;
  }
}
