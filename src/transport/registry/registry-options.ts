// The registry settings out of a larger options object (CLI flags, push options with progress
// callbacks): only what a RegistryClient reads, and only the ones given. A module of its own, with no
// imports to load, because the CLI calls it before it loads any registry code.
import type { RegistryOptions } from './client.js';

export function registryOptions(options: RegistryOptions): RegistryOptions {
  const { tlsVerify, creds, authFiles, retry } = options;
  return { ...(tlsVerify !== undefined ? { tlsVerify } : {}), ...(creds !== undefined ? { creds } : {}), ...(authFiles ? { authFiles } : {}), ...(retry ? { retry } : {}) };
}
