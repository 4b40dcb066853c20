// Build progress on stderr as BuildKit's plain output shows it: every step a numbered vertex, then
// CACHED, or its output line by line with the seconds since it started, then DONE with its duration.
//   #2 [build 2/4] RUN make
//   #2 0.412 cc -o app main.c
//   #2 DONE 3.1s
import type { Writable } from 'node:stream';
import type { BuildEvent } from '../executor/events.js';

/** Writes into `stream`; a promise when it is full, so that a RUN's output waits for a slow reader of stderr. */
export function streamWriter(stream: Writable): (text: string) => void | Promise<void> {
  let drained: Promise<void> | undefined; // one wait for 'drain', however many lines found the stream full
  return (text) => {
    if (stream.write(text)) return;
    drained ??= new Promise<void>((resolve) => stream.once('drain', () => {
      drained = undefined;
      resolve();
    }));
    return drained;
  };
}

const MAX_PARTIAL_LINE = 64 * 1024;

export class BuildProgress {
  readonly #started = new Map<number, number>();
  readonly #partial = new Map<number, string>();
  /** what the last write returned: output waits on it before it takes more (event kinds other than output are few) */
  #full: void | Promise<void> = undefined;

  constructor(private readonly write: (text: string) => void | Promise<void> = streamWriter(process.stderr)) {}

  readonly onEvent = (event: BuildEvent): void | Promise<void> => {
    switch (event.type) {
      case 'vertex':
        this.#started.set(event.id, Date.now());
        this.write(`#${event.id} ${event.name}\n`);
        break;
      case 'cached':
        this.write(`#${event.id} CACHED\n`);
        break;
      case 'output':
        this.#full = undefined;
        this.#output(event.id, event.chunk.toString('utf8'));
        return this.#full;
      case 'done': {
        const rest = this.#partial.get(event.id);
        if (rest) this.#line(event.id, rest);
        this.#partial.delete(event.id);
        this.write(`#${event.id} DONE ${event.seconds.toFixed(1)}s\n`);
        break;
      }
      case 'boot':
        this.write(`#0 booting the build VM for ${event.stage} (${event.steps} step${event.steps === 1 ? '' : 's'})\n`);
        break;
      case 'warning':
        this.write(`dockvm: warning: ${event.message}\n`);
        break;
    }
  };

  #output(id: number, text: string): void {
    const lines = ((this.#partial.get(id) ?? '') + text).split('\n');
    let rest = lines.pop()!;
    // output that never ends a line is shown in pieces rather than held without end
    if (rest.length >= MAX_PARTIAL_LINE) {
      lines.push(rest);
      rest = '';
    }
    this.#partial.set(id, rest);
    for (const line of lines) this.#line(id, line);
  }

  #line(id: number, line: string): void {
    const seconds = (Date.now() - (this.#started.get(id) ?? Date.now())) / 1000;
    this.#full = this.write(`#${id} ${seconds.toFixed(3)} ${line.replace(/\r$/, '')}\n`);
  }
}
