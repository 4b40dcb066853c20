// A spec's image config: the base's config carried over as Docker's FROM does, the spec's config on top,
// Env merged with one entry per name (the later value wins: Kubernetes gives duplicates no meaning),
// Labels, ExposedPorts and Volumes merged (the executor writes the whole config: src/executor/image-config.ts).
import type { ContainerConfig } from '../image/config.js';

const DEFAULT_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Merge NAME=value lists: one entry per name, in order of first appearance, the last value winning. */
export function mergeEnv(...lists: readonly (readonly string[] | undefined)[]): string[] {
  const merged = new Map<string, string>();
  for (const list of lists) {
    for (const item of list ?? []) {
      const eq = item.indexOf('=');
      const name = eq < 0 ? item : item.slice(0, eq);
      merged.set(name, item);
    }
  }
  return [...merged.values()];
}

export function mergeContainerConfig(base: ContainerConfig | undefined, spec: ContainerConfig | null): ContainerConfig {
  const merged: ContainerConfig = { ...base, ...spec };
  const env = mergeEnv(base?.Env, spec?.Env);
  if (env.length > 0) merged.Env = env;
  for (const key of ['Labels', 'ExposedPorts', 'Volumes'] as const) {
    if (base?.[key] || spec?.[key]) merged[key] = { ...base?.[key], ...spec?.[key] } as never;
  }
  return merged;
}

/**
 * The script's environment, as Dockerfile RUN has it: the image's merged Env, then the spec's `env`,
 * PATH defaulted when absent, HOME=/root.
 */
export function scriptEnvironment(imageEnv: readonly string[] | undefined, extra: Readonly<Record<string, string>>): string[] {
  const env = mergeEnv([DEFAULT_PATH, 'HOME=/root'], imageEnv, Object.entries(extra).map(([k, v]) => `${k}=${v}`));
  return env;
}

/** "now" → the current time (not reproducible, on purpose); an ISO time → itself, normalised. */
export function resolveCreated(created: string): string {
  const date = created === 'now' ? new Date() : new Date(created);
  return date.toISOString().replace(/\.\d{3}Z$/, 'Z');
}
