// Which scheme a registry is reached over. Like Docker: HTTPS, except that a registry on a loopback
// address (127.0.0.0/8, ::1, localhost) or one the user marked insecure (--tls-verify=false) may also be
// reached over plain HTTP when HTTPS does not answer.
import { isIP } from 'node:net';

/** "127.0.0.1:5000" → "127.0.0.1"; "[::1]:5000" → "::1"; "localhost" → "localhost". */
export function hostName(registry: string): string {
  if (registry.startsWith('[')) return registry.slice(1, registry.indexOf(']'));
  const colon = registry.lastIndexOf(':');
  return colon < 0 ? registry : registry.slice(0, colon);
}

export function isLoopback(registry: string): boolean {
  const host = hostName(registry).toLowerCase();
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  if (isIP(host) === 6) return host === '::1' || host === '0:0:0:0:0:0:0:1';
  return false;
}

/** The schemes to try, in order. */
export function schemesFor(registry: string, tlsVerify: boolean): ('https' | 'http')[] {
  return !tlsVerify || isLoopback(registry) ? ['https', 'http'] : ['https'];
}
