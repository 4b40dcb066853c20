// Where a build's wall time goes, phase by phase, for the benchmarks (scripts/bench-run-as-root.ts):
// a phase reports how long it took to the listener, when one is set. None is set outside benchmarks,
// and then a phase costs a comparison.
import { performance } from 'node:perf_hooks';

export type PhaseListener = (phase: string, seconds: number) => void;

let listener: PhaseListener | undefined;

/** Report every phase to `next` from now on (undefined: to nothing); returns the listener it replaces. */
export function setPhaseListener(next: PhaseListener | undefined): PhaseListener | undefined {
  const previous = listener;
  listener = next;
  return previous;
}

/** `fn`, its wall time reported as `phase` (whether it succeeds or not). */
export async function timePhase<T>(phase: string, fn: () => Promise<T>): Promise<T> {
  const report = listener;
  if (report === undefined) return fn();
  const start = performance.now();
  try {
    return await fn();
  } finally {
    report(phase, (performance.now() - start) / 1000);
  }
}

/** A phase that does not fit one call: `start` it, and the returned function reports it when called. */
export function startPhase(phase: string): () => void {
  const report = listener;
  if (report === undefined) return () => {};
  const start = performance.now();
  return () => report(phase, (performance.now() - start) / 1000);
}
