// A built stage's image config, as Docker writes it: the stage's final container config (the planner
// applied every ENV, LABEL, CMD… to it), the base's history and diff_ids followed by one history entry per
// step that has one (`empty_layer` for config-only steps, BuildKit's comment), keys in a fixed order so
// the JSON and its digest are reproducible.
import type { ImageConfig, HistoryEntry } from '../image/config.js';
import type { Digest } from '../image/digest.js';
import type { Stage } from '../plan/plan.js';
import { architectureRow } from '../vm/architectures.js';

/** BuildKit's history comment for Dockerfile steps. */
const HISTORY_COMMENT = 'buildkit.dockerfile.v0';

export function stageImageConfig(stage: Stage, base: ImageConfig | undefined, diffIds: readonly Digest[], created: string): ImageConfig {
  const history: HistoryEntry[] = historyOf(base);
  for (const step of stage.steps) {
    if (step.createdBy === null) continue;
    history.push({ created, created_by: step.createdBy, comment: HISTORY_COMMENT, ...(step.emptyLayer ? { empty_layer: true } : {}) });
  }
  const { platform } = stage;
  // arm64 images say v8 (as BuildKit writes them) also when the platform was asked for without it
  const variant = platform.variant ?? (platform.os === 'linux' ? architectureRow(platform.architecture)?.variant : undefined);
  return {
    architecture: platform.architecture,
    ...(stage.author !== undefined ? { author: stage.author } : {}),
    config: stage.config,
    created,
    history,
    os: platform.os,
    rootfs: { type: 'layers', diff_ids: [...diffIds] },
    ...(variant ? { variant } : {}),
  };
}

/**
 * The image config as run-as-root has always written it (a stage of `configStyle` "nixpkgs"): the stage's
 * config (the base's merged with the spec's), the base's history and one entry per step without a comment,
 * keys in this order, so that a spec gives the bytes, config digest and derived tag it always gave.
 */
export function nixpkgsImageConfig(stage: Stage, base: ImageConfig | undefined, diffIds: readonly Digest[], created: string): ImageConfig {
  const history: HistoryEntry[] = historyOf(base);
  for (const step of stage.steps) if (step.createdBy !== null) history.push({ created, created_by: step.createdBy });
  const { platform } = stage;
  return {
    created,
    architecture: platform.architecture,
    os: base?.os ?? platform.os,
    ...(platform.variant !== undefined ? { variant: platform.variant } : {}),
    config: stage.config,
    rootfs: { type: 'layers', diff_ids: [...diffIds] },
    history,
  };
}

/** A base's history, padded so that it names every layer (some images carry none). */
function historyOf(base: ImageConfig | undefined): HistoryEntry[] {
  if (!base) return [];
  const history = [...(base.history ?? [])];
  const layered = history.filter((entry) => !entry.empty_layer).length;
  for (let i = layered; i < base.rootfs.diff_ids.length; i++) history.push({ created: base.created ?? '1970-01-01T00:00:00Z' });
  return history;
}
