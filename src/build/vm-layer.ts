// The new layer made in the build VM (runAsRoot). Filled in once the VM runtime lands.
import type { Image } from '../image/image.js';
import type { LayerFile } from '../layer/layer-file.js';
import type { BuildSpec } from '../spec/load.js';
import { VmError } from '../errors.js';

export interface VmBuildOptions {
  /** give up after this long (the --timeout flag) */
  timeoutMs?: number;
}

export async function buildLayerInVm(
  _spec: BuildSpec,
  _base: Image | undefined,
  _tmp: string,
  _clampMtime: number,
  _options: VmBuildOptions,
): Promise<LayerFile> {
  throw new VmError('runAsRoot needs the build VM, which is not wired up yet');
}
