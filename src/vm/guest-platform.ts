// The platform the build VM executes programs of: its kernel's (Debian's amd64 kernel on
// qemu-system-x86_64), which the bundled tools (guest-tools.ts) are built for too. There is one today;
// arm64 guests (a later change) make this a choice by the base's platform.
import type { Platform } from '../image/config.js';

export const GUEST_ARCHITECTURE = 'amd64';

/** What the build VM runs: an image of another platform cannot run a script there. */
export const GUEST_PLATFORM: Readonly<Platform> = { os: 'linux', architecture: GUEST_ARCHITECTURE };
