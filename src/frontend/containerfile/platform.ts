// Platforms as a Containerfile names them (FROM --platform=, --platform on the command line) and the
// build args BuildKit predefines from them (TARGETPLATFORM, TARGETARCH, BUILDPLATFORM, …).
import type { Platform } from '../../image/config.js';
import { formatPlatform, hostArchitecture } from '../../image/platform.js';

// parsing and naming a platform is the image model's (src/image/platform.ts), re-exported for the front end
export { formatPlatform, parsePlatform } from '../../image/platform.js';

export function hostPlatform(): Platform {
  return { os: 'linux', architecture: hostArchitecture() };
}

/** BuildKit's automatic platform args; `target` is the TARGETSTAGE ("default" when unnamed). */
export function platformArgs(build: Platform, target: Platform, targetStage: string): [string, string][] {
  return [
    ['BUILDPLATFORM', formatPlatform({ os: build.os, architecture: build.architecture, ...(build.variant ? { variant: build.variant } : {}) })],
    ['BUILDOS', build.os],
    ['BUILDOSVERSION', ''],
    ['BUILDARCH', build.architecture],
    ['BUILDVARIANT', build.variant ?? ''],
    ['TARGETPLATFORM', formatPlatform(target)],
    ['TARGETOS', target.os],
    ['TARGETOSVERSION', ''],
    ['TARGETARCH', target.architecture],
    ['TARGETVARIANT', target.variant ?? ''],
    ['TARGETSTAGE', targetStage || 'default'],
  ];
}

/** The build args Docker passes to RUN without an ARG declaring them, and keeps out of the history. */
export const PROXY_ARGS = new Set(['HTTP_PROXY', 'HTTPS_PROXY', 'FTP_PROXY', 'NO_PROXY', 'ALL_PROXY'].flatMap((n) => [n, n.toLowerCase()]));
