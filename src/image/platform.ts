// This host's platform as images name it, and platforms as people write them ("linux/arm64").
import type { Platform } from './config.js';

/** Go's GOARCH for this host (what an image's `architecture` says). */
export function hostArchitecture(): string {
  const map: Record<string, string> = { x64: 'amd64', ia32: '386', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };
  return map[process.arch] ?? process.arch;
}

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
