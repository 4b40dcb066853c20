// Planning a Containerfile in a throwaway context directory, with base images given as plain configs.
import type { ExecutionContext } from 'ava';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { ContainerConfig } from '../../../src/image/config.js';
import { ContainerfileError } from '../../../src/frontend/containerfile/errors.js';
import { planContainerfile, type BaseRequest, type PlanContainerfileOptions } from '../../../src/frontend/containerfile/planner.js';
import type { Plan } from '../../../src/plan/plan.js';

/** A context file: text, or { symlink } */
export type ContextFile = string | { symlink: string } | { dir: true };

export function makeContext(t: ExecutionContext, files: Record<string, ContextFile>): string {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-cfile-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const [path, content] of Object.entries(files)) {
    const full = join(dir, path);
    mkdirSync(dirname(full), { recursive: true });
    if (typeof content === 'string') writeFileSync(full, content);
    else if ('symlink' in content) symlinkSync(content.symlink, full);
    else mkdirSync(full, { recursive: true });
  }
  return dir;
}

export interface PlanTestOptions extends Partial<Omit<PlanContainerfileOptions, 'resolveBase'>> {
  files?: Record<string, ContextFile>;
  /** base configs by the reference the planner asks for ("docker://debian:12"); any other → { Env: [PATH] } */
  bases?: Record<string, ContainerConfig>;
  /** filled with every base request the planner made */
  requests?: BaseRequest[];
}

export const BASE_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export async function plan(t: ExecutionContext, containerfile: string, options: PlanTestOptions = {}): Promise<Plan> {
  const { files = {}, bases = {}, requests, ...rest } = options;
  const contextDir = makeContext(t, { Containerfile: containerfile, ...files });
  return planContainerfile({
    contextDir,
    ...rest,
    resolveBase: async (request) => {
      requests?.push(request);
      return { config: structuredClone(bases[request.ref] ?? { Env: [BASE_PATH] }), platform: request.platform ?? { os: 'linux', architecture: 'amd64' } };
    },
  });
}

export async function planError(t: ExecutionContext, containerfile: string, options: PlanTestOptions = {}): Promise<ContainerfileError> {
  const err = await t.throwsAsync(plan(t, containerfile, options), { instanceOf: ContainerfileError });
  return err!;
}

/** The steps of the target stage. */
export function targetSteps(p: Plan): Plan['stages'][number]['steps'] {
  return p.stages[p.target]!.steps;
}
