// Waiting for an event (a process gone, a line on the console, a file appearing) rather than for a
// fixed time. The deadline only stops a hang: generous, so that TCG on a busy host does not trip it.
import { setTimeout as sleep } from 'node:timers/promises';

/** The default deadline against hangs. */
export const HANG_DEADLINE_MS = 60_000;

/** Resolves true as soon as `check()` holds; false if it still does not after `deadlineMs`. */
export async function waitFor(check: () => boolean | Promise<boolean>, deadlineMs = HANG_DEADLINE_MS): Promise<boolean> {
  const until = Date.now() + deadlineMs;
  while (Date.now() < until) {
    if (await check()) return true;
    await sleep(20);
  }
  return check();
}
