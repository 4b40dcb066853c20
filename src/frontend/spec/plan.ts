// spec.json as a build plan (src/plan/plan.ts): one stage over fromImage (or scratch) with one step,
// nixpkgs buildImage's copyToRoot + runAsRoot + extraCommands, whose changes are one layer; the image
// config written as run-as-root has always written it. What needs the base's files (where copyToRoot's
// entries land over its links, src/build/copy-over-base.ts) is decided by the caller before planning:
// the plan names the tar it made.
import { dirname } from 'node:path';
import type { ImageConfig, Platform } from '../../image/config.js';
import { mergeContainerConfig, scriptEnvironment } from '../../build/config.js';
import { PLAN_VERSION, type Plan, type RootStep } from '../../plan/plan.js';
import type { BuildSpec } from '../../spec/load.js';

/** The history line of the spec's layer: made in the VM, or (no runAsRoot) on the host. */
export const RUN_AS_ROOT_CREATED_BY = 'dockvm run-as-root';
export const COPY_TO_ROOT_CREATED_BY = 'dockvm copyToRoot';

export interface SpecPlanInput {
  /** the base's config (undefined: FROM scratch) */
  base: ImageConfig | undefined;
  /** the build's platform (src/build/platform.ts buildPlatform) */
  platform: Platform;
  /** the copyToRoot tar, as placed over the base; undefined: none */
  copyTar: string | undefined;
}

export function planSpec(spec: BuildSpec, input: SpecPlanInput): Plan {
  const source = spec.specPath || 'spec.json';
  // the script sees the base's Env with the spec's config.Env after it, then the spec's env
  const imageEnv = [...(input.base?.config?.Env ?? []), ...(spec.config?.Env ?? [])];
  const step: RootStep = {
    kind: 'root',
    location: { file: source, line: 1 },
    createdBy: spec.runAsRoot !== null ? RUN_AS_ROOT_CREATED_BY : COPY_TO_ROOT_CREATED_BY,
    emptyLayer: false,
    cacheText: spec.runAsRoot !== null ? 'runAsRoot' : 'copyToRoot',
    copyTar: input.copyTar ?? null,
    copyToRoot: [...spec.copyToRoot],
    uid: spec.uid,
    gid: spec.gid,
    keepContentsDirlinks: spec.keepContentsDirlinks,
    runAsRoot: spec.runAsRoot,
    extraCommands: spec.extraCommands,
    env: scriptEnvironment(imageEnv, spec.env),
    network: spec.network,
    diskSize: spec.diskSize,
    buildVMMemorySize: spec.buildVMMemorySize,
    // created "now" without SOURCE_DATE_EPOCH: every build's layer differs (its mtimes), on purpose
    cacheable: !(spec.created === 'now' && !process.env.SOURCE_DATE_EPOCH),
  };
  const baseConfig = structuredClone(input.base?.config ?? {});
  return {
    version: PLAN_VERSION,
    source,
    context: { dir: spec.specPath ? dirname(spec.specPath) : process.cwd(), ignore: [] },
    stages: [
      {
        index: 0,
        line: 1,
        base: spec.fromImage !== null ? { kind: 'image', ref: spec.fromImage } : { kind: 'scratch' },
        platform: input.platform,
        baseConfig,
        steps: [step],
        config: mergeContainerConfig(input.base?.config, spec.config),
        configStyle: 'nixpkgs',
      },
    ],
    target: 0,
    warnings: [],
  };
}
