// Which build VM executes programs of an image's platform: the row of its architecture
// (architectures.ts), when dockvm has one for it; and whether this host has that row's pieces (QEMU for
// the architecture, a compiler for its agent), checked before a VM of it starts. The kernel and the
// guest's tools are fetched on demand.
import { PlatformError } from '../errors.js';
import type { Platform } from '../image/config.js';
import { ARCHITECTURE_NAMES, type ArchitectureRow, architectureRow } from './architectures.js';
import { findAgentCompiler } from './agent-binary.js';
import { findQemu } from './qemu.js';

/** What a build VM of `row` runs: an image of this platform's programs. */
export function guestPlatform(row: ArchitectureRow): Platform {
  return { os: 'linux', architecture: row.architecture, ...(row.variant !== undefined ? { variant: row.variant } : {}) };
}

/** "linux/arm64/v8" */
export function describePlatform(platform: Platform): string {
  return [platform.os, platform.architecture, platform.variant].filter(Boolean).join('/');
}

/**
 * The row whose build VM runs programs of `platform` (`what` names it in the error: "fromImage X"), or
 * a PlatformError saying which platforms dockvm runs. A variant other than the row's (linux/arm/v7 has
 * no row; linux/arm64/v9 is not arm64's v8) is refused too.
 */
export function guestRowFor(platform: Platform, what: string): ArchitectureRow {
  const row = platform.os === 'linux' ? architectureRow(platform.architecture) : undefined;
  if (row === undefined || (platform.variant !== undefined && platform.variant !== row.variant)) {
    const known = ARCHITECTURE_NAMES.map((name) => describePlatform(guestPlatform(architectureRow(name)!))).join(', ');
    throw new PlatformError(`${what} is ${describePlatform(platform)}, which dockvm has no build VM for (it runs ${known})`);
  }
  return row;
}

/** Throws the one-line "install X" error when this host lacks a piece of `row`'s build VM. */
export async function requireGuestPieces(row: ArchitectureRow, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  await findQemu(row, env);
  await findAgentCompiler(row, env);
}
