// Choosing one image from an index (a manifest list) by os/architecture/variant, as Docker does:
// architecture names normalised (x86_64 → amd64, aarch64 → arm64), arm64's variant "v8" is its default,
// and entries that are not images (attestations, platform unknown/unknown) are never chosen.
import type { Platform } from '../../image/config.js';
import { hostArchitecture } from '../../image/platform.js';

export interface PlatformChoice {
  os: string;
  architecture: string;
  /** only this variant; when absent, the architecture's default variant is preferred, else the first */
  variant?: string;
}

const ARCH_ALIASES: Record<string, string> = { x86_64: 'amd64', 'x86-64': 'amd64', aarch64: 'arm64', armhf: 'arm', armel: 'arm', i386: '386' };
/** The variant an architecture means when none is named. */
const DEFAULT_VARIANT: Record<string, string> = { arm64: 'v8', arm: 'v7' };

export function normalizeArchitecture(architecture: string): string {
  return ARCH_ALIASES[architecture] ?? architecture;
}

/** The platform asked for: given fields, else linux and the host's architecture. */
export function wantedPlatform(partial: Partial<Platform> = {}): PlatformChoice {
  const choice: PlatformChoice = { os: partial.os ?? 'linux', architecture: normalizeArchitecture(partial.architecture ?? hostArchitecture()) };
  if (partial.variant !== undefined) choice.variant = partial.variant;
  return choice;
}

function variantOf(platform: { architecture: string; variant?: string | undefined }): string | undefined {
  return platform.variant ?? DEFAULT_VARIANT[normalizeArchitecture(platform.architecture)];
}

export function formatPlatform(platform: { os: string; architecture: string; variant?: string | undefined }): string {
  return [platform.os, platform.architecture, platform.variant].filter(Boolean).join('/');
}

/** Whether `platform` is what `wanted` asks for. */
export function platformMatches(platform: { os: string; architecture: string; variant?: string | undefined }, wanted: PlatformChoice): boolean {
  if (platform.os !== wanted.os || normalizeArchitecture(platform.architecture) !== wanted.architecture) return false;
  return wanted.variant === undefined || variantOf(platform) === variantOf(wanted);
}

/**
 * The index entry for `wanted`, or undefined. Without a variant asked for, an entry with the
 * architecture's default variant wins over others (arm: v7 over v6), else the first entry that matches.
 */
export function choosePlatform<T extends { platform?: { os: string; architecture: string; variant?: string | undefined } | undefined }>(
  entries: readonly T[],
  wanted: PlatformChoice,
): T | undefined {
  const matching = entries.filter((entry) => entry.platform && platformMatches(entry.platform, wanted));
  if (wanted.variant !== undefined) return matching[0];
  const preferred = DEFAULT_VARIANT[wanted.architecture];
  return matching.find((entry) => preferred !== undefined && variantOf(entry.platform!) === preferred) ?? matching[0];
}

/** The platforms an index offers, for an error message ("linux/arm64/v8, linux/arm/v7"). */
export function offeredPlatforms(entries: readonly { platform?: { os: string; architecture: string; variant?: string | undefined } | undefined }[]): string[] {
  return entries
    .map((entry) => entry.platform)
    .filter((platform): platform is NonNullable<typeof platform> => platform !== undefined && platform.os !== 'unknown' && platform.architecture !== 'unknown')
    .map(formatPlatform);
}
