// The executor's errors: a step that cannot be built (a failing RUN, a COPY source that is not there, a
// download whose checksum differs, a feature not built yet), named by the Containerfile line it came from.
import { DockvmError, type ErrorContext } from '../errors.js';
import type { StepLocation } from '../plan/plan.js';

export class BuildStepError extends DockvmError {}

/** "Containerfile:12: RUN apt-get install -y x: " — where a step's error message starts. */
export function stepPrefix(location: StepLocation, text: string): string {
  return `${location.file}:${location.line}: ${text}: `;
}

/** An error for a step, the message led by its file, line and instruction. */
export function stepError(location: StepLocation, text: string, reason: string, context: ErrorContext = {}): BuildStepError {
  return new BuildStepError(stepPrefix(location, text) + reason, { source: location.file, ...context });
}

/** A plan feature the executor does not build yet: refused by name, never ignored. */
export function notSupported(location: StepLocation, text: string, what: string): BuildStepError {
  return stepError(location, text, `${what} is not supported yet by dockvm build`);
}
