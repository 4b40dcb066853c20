// Applying a plan's config changes to an image config, as Docker (BuildKit's dispatchers) does: ENV
// replaces a variable in place or appends it, LABEL/EXPOSE/VOLUME add keys, ENTRYPOINT clears an
// inherited CMD, CMD sets ArgsEscaped (BuildKit keeps Docker's field for compatibility). Pure: returns a
// new config and never edits its input.
import type { ContainerConfig } from '../image/config.js';
import type { ConfigChange } from './plan.js';

/** The part of an image config the steps of a stage edit. */
export interface ImageState {
  config: ContainerConfig;
  /** the image's top-level `author` */
  author?: string;
}

export function applyConfigChange(state: ImageState, change: ConfigChange): ImageState {
  const config: ContainerConfig = { ...state.config };
  switch (change.op) {
    case 'none':
      return state;
    case 'author':
      return { config, author: change.author };
    case 'env':
      config.Env = change.vars.reduce((env, [name, value]) => setEnv(env, name, value), [...(config.Env ?? [])]);
      break;
    case 'labels':
      config.Labels = { ...config.Labels, ...Object.fromEntries(change.labels) };
      break;
    case 'user':
      config.User = change.user;
      break;
    case 'workdir':
      config.WorkingDir = change.path;
      break;
    case 'expose':
      config.ExposedPorts = { ...config.ExposedPorts, ...Object.fromEntries(change.ports.map((p) => [p, {}])) };
      break;
    case 'volumes':
      config.Volumes = { ...config.Volumes, ...Object.fromEntries(change.paths.map((p) => [p, {}])) };
      break;
    // Docker's Entrypoint and Cmd are omitted when empty: ENTRYPOINT [] and CMD [] remove them
    case 'entrypoint':
      if (change.argv.length > 0) config.Entrypoint = [...change.argv];
      else delete config.Entrypoint;
      if (change.resetCmd) delete config.Cmd;
      break;
    case 'cmd':
      if (change.argv.length > 0) config.Cmd = [...change.argv];
      else delete config.Cmd;
      config.ArgsEscaped = true;
      break;
    case 'shell':
      config.Shell = [...change.argv];
      break;
    case 'stopsignal':
      config.StopSignal = change.signal;
      break;
    case 'healthcheck':
      config.Healthcheck = { ...change.healthcheck };
      break;
    case 'onbuild':
      config.OnBuild = [...((config.OnBuild as string[] | undefined) ?? []), change.trigger];
      break;
  }
  return state.author === undefined ? { config } : { config, author: state.author };
}

/** Docker's addEnv: replace NAME's entry where it is, or append it. */
export function setEnv(env: readonly string[], name: string, value: string): string[] {
  const entry = `${name}=${value}`;
  const at = env.findIndex((item) => envName(item) === name);
  if (at < 0) return [...env, entry];
  const next = [...env];
  next[at] = entry;
  return next;
}

export function envName(item: string): string {
  const eq = item.indexOf('=');
  return eq < 0 ? item : item.slice(0, eq);
}

/** The value of NAME in an Env list, or undefined. */
export function envValue(env: readonly string[] | undefined, name: string): string | undefined {
  const item = env?.find((entry) => envName(entry) === name);
  return item === undefined ? undefined : item.slice(name.length + 1);
}
