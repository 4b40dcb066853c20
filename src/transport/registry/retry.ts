// Retrying with exponential backoff: what is worth retrying (a 5xx, a dropped connection), and how long to wait.
import { setTimeout as sleep } from 'node:timers/promises';

export interface RetryPolicy {
  /** attempts in all, the first included */
  attempts: number;
  /** the first wait; doubled after every failed attempt */
  backoffMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 4, backoffMs: 250 };

/** Network failures that a new attempt may get past: a reset or dropped connection, a timeout. */
const TRANSIENT_CODES = new Set([
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'ECONNABORTED',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_CONNECT_TIMEOUT',
]);

/** The innermost error code of a fetch failure ("fetch failed" → cause → code). */
export function networkCode(err: unknown): string | undefined {
  let current: unknown = err;
  for (let depth = 0; depth < 5 && current; depth++) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === 'string' && code !== 'ERR_INVALID_STATE') return code;
    current = (current as { cause?: unknown }).cause;
  }
  return undefined;
}

export function isTransientNetworkError(err: unknown): boolean {
  const code = networkCode(err);
  if (code !== undefined) return TRANSIENT_CODES.has(code);
  // undici ends a body cut short with a bare TypeError("terminated").
  return err instanceof TypeError && /terminated|other side closed/i.test(err.message);
}

export function isTransientStatus(status: number): boolean {
  return status >= 500 || status === 429 || status === 408;
}

export function backoff(policy: RetryPolicy, attempt: number): Promise<void> {
  return sleep(policy.backoffMs * 2 ** (attempt - 1));
}
