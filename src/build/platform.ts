// The platform a build is for: its base's, or the spec's `architecture` (the host's for FROM scratch).
// A build that executes anything in the image (runAsRoot, dockvm shell) runs in that platform's own
// build VM (src/vm/architectures.ts: an arm64 image in an emulated arm64 machine on an amd64 host). It
// is refused before anything is written when dockvm has no VM for the platform; a host that lacks a
// piece of that VM (QEMU for the architecture, the agent's compiler) gets one line saying what to install
// when the VM is about to start (src/vm/vm.ts), so that a build the cache answers needs none of them.
// Exporting and building without runAsRoot (nothing executes) only label.
import { SpecError } from '../errors.js';
import type { ImageConfig, Platform } from '../image/config.js';
import { hostArchitecture } from '../image/platform.js';
import { type ArchitectureRow, architectureRow, defaultArchitecture } from '../vm/architectures.js';
import { describePlatform, guestRowFor } from '../vm/guest-platform.js';

export { describePlatform } from '../vm/guest-platform.js';

/** An image config's platform ("linux" when it names no os, as Docker reads such configs). */
export function platformOf(config: ImageConfig): Platform {
  return { os: config.os || 'linux', architecture: config.architecture, ...(config.variant ? { variant: config.variant } : {}) };
}

/**
 * The platform of a new image: the base's, which a spec's `architecture` may repeat but not contradict
 * (the base's binaries are what the image holds).
 */
export function buildPlatform(architecture: string | null, base: ImageConfig | undefined, fromImage: string | null): Platform {
  // A config without an architecture (some hand-made images) says nothing to disagree with.
  if (!base?.architecture) return withVariant({ os: base?.os || 'linux', architecture: architecture ?? hostArchitecture() });
  const platform = platformOf(base);
  if (architecture !== null && architecture !== platform.architecture) {
    throw new SpecError(
      `architecture: "${architecture}" disagrees with fromImage ${fromImage ?? ''}, which is ${describePlatform(platform)}; ` +
        `drop architecture (the base's is used) or pick a base of ${architecture}`,
      [],
      { field: 'architecture' },
    );
  }
  return withVariant(platform);
}

/**
 * The variant an architecture's images carry when the config names none (arm64: v8), so that the result
 * is labelled as the peers label it; unchanged for architectures without one.
 */
function withVariant(platform: Platform): Platform {
  const variant = platform.os === 'linux' ? architectureRow(platform.architecture)?.variant : undefined;
  return platform.variant === undefined && variant !== undefined ? { ...platform, variant } : platform;
}

/**
 * The build VM that executes programs of `platform` (`what` names the image in errors): its row, or a
 * PlatformError naming the platforms dockvm has a VM for.
 */
export function runnableRow(platform: Platform, what: string): ArchitectureRow {
  // a config that names no architecture says nothing to refuse: the host's own VM runs it
  return platform.architecture === '' ? defaultArchitecture() : guestRowFor(platform, what);
}
