// Platforms as a Containerfile names them (FROM --platform=, --platform on the command line) and the
// build args BuildKit predefines from them (TARGETPLATFORM, TARGETARCH, BUILDPLATFORM, …).
import type { Platform } from '../../image/config.js';
import { hostArchitecture } from '../../image/platform.js';

const ARCH_ALIASES: Record<string, string> = { x86_64: 'amd64', 'x86-64': 'amd64', aarch64: 'arm64', armhf: 'arm', armel: 'arm', i386: '386' };

/** "linux/arm64/v8", "linux/amd64", "arm64" (linux implied) → a Platform, normalised as containerd does. */
export function parsePlatform(text: string): Platform | undefined {
  const parts = text.trim().toLowerCase().split('/');
  if (parts.some((p) => !/^[a-z0-9._-]+$/.test(p)) || parts.length > 3) return undefined;
  let [os, architecture, variant] = parts as [string, string | undefined, string | undefined];
  if (parts.length === 1) {
    // one word is an architecture, unless it names an OS
    if (os === 'linux' || os === 'windows' || os === 'darwin' || os === 'freebsd') architecture = hostArchitecture();
    else [os, architecture] = ['linux', os];
  }
  architecture = ARCH_ALIASES[architecture!] ?? architecture!;
  if (architecture === 'arm64' && (variant === 'v8' || variant === '8')) variant = undefined;
  if (architecture === 'arm' && variant === undefined) variant = 'v7';
  return variant ? { os, architecture, variant } : { os, architecture };
}

export function formatPlatform(platform: Platform): string {
  return [platform.os, platform.architecture, platform.variant].filter(Boolean).join('/');
}

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
