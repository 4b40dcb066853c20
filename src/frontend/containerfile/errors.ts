// The one error a bad Containerfile gets: it names the file, the line (and the column for a syntax
// error), the instruction and the flag, so the person can go straight to it. Defined here, not in
// src/errors.ts, so the front end stays in its own files; it is a DockvmError like every other.
import { DockvmError, type ErrorContext } from '../../errors.js';

export interface SourcePosition {
  file: string;
  /** 1-based; 0 when the error is about the file (or the build's options) as a whole */
  line: number;
  /** 1-based; only for syntax errors, where the place within the line is known */
  column?: number;
}

export interface ContainerfileErrorDetails extends SourcePosition {
  /** the instruction, upper case ("COPY") */
  instruction?: string;
  /** the flag, as written without its value ("--mount") */
  flag?: string;
}

export class ContainerfileError extends DockvmError {
  readonly file: string;
  readonly line: number;
  readonly column: number | undefined;
  readonly instruction: string | undefined;
  readonly flag: string | undefined;
  /** the message without the location prefix */
  readonly reason: string;

  constructor(reason: string, details: ContainerfileErrorDetails, context: ErrorContext = {}) {
    super(`${describe(details)}: ${reason}`, { source: details.file, ...context });
    this.file = details.file;
    this.line = details.line;
    this.column = details.column;
    this.instruction = details.instruction;
    this.flag = details.flag;
    this.reason = reason;
  }
}

/** "Containerfile:12:5: COPY --chown" */
function describe(details: ContainerfileErrorDetails): string {
  const line = details.line > 0 ? `:${details.line}` : '';
  const where = `${details.file}${line}${line && details.column !== undefined ? `:${details.column}` : ''}`;
  const what = [details.instruction, details.flag].filter(Boolean).join(' ');
  return what ? `${where}: ${what}` : where;
}
