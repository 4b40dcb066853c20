// The platform a build is for: its base's, or the spec's `architecture` (the host's for FROM scratch).
// The build VM runs programs of one platform (src/vm/guest-platform.ts) and there are no cross-platform
// builds yet, so a build that executes anything in the image (runAsRoot, dockvm shell) over another
// platform is refused before any VM boots: the bundled tools would run instead of the image's and the
// result would be labelled with a platform its binaries are not for. Exporting (nothing executes) and
// building without runAsRoot (nothing executes either) only label.
import { PlatformError, SpecError } from '../errors.js';
import type { ImageConfig, Platform } from '../image/config.js';
import { hostArchitecture } from '../image/platform.js';
import { GUEST_PLATFORM } from '../vm/guest-platform.js';

/** "linux/arm64/v8" */
export function describePlatform(platform: Platform): string {
  return [platform.os, platform.architecture, platform.variant].filter(Boolean).join('/');
}

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
  if (!base?.architecture) return { os: base?.os || 'linux', architecture: architecture ?? hostArchitecture() };
  const platform = platformOf(base);
  if (architecture !== null && architecture !== platform.architecture) {
    throw new SpecError(
      `architecture: "${architecture}" disagrees with fromImage ${fromImage ?? ''}, which is ${describePlatform(platform)}; ` +
        `drop architecture (the base's is used) or pick a base of ${architecture}`,
      [],
      { field: 'architecture' },
    );
  }
  return platform;
}

/** Refuse to execute programs of `platform` in the build VM when it runs another (`what`: the image). */
export function checkRunnable(platform: Platform, what: string): void {
  // a config that names no architecture says nothing to refuse
  if (platform.architecture === '') return;
  if (platform.os === GUEST_PLATFORM.os && platform.architecture === GUEST_PLATFORM.architecture) return;
  throw new PlatformError(
    `${what} is ${describePlatform(platform)}, but the build VM runs ${describePlatform(GUEST_PLATFORM)} programs only ` +
      `(cross-platform builds are not supported yet)`,
  );
}
