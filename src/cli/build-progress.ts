// Build progress on stderr as BuildKit's plain output shows it: every step a numbered vertex, then
// CACHED, or its output line by line with the seconds since it started, then DONE with its duration.
//   #2 [build 2/4] RUN make
//   #2 0.412 cc -o app main.c
//   #2 DONE 3.1s
import type { BuildEvent } from '../executor/events.js';
import { toWritable } from '../vm/agent-client.js';

const MAX_PARTIAL_LINE = 64 * 1024;

export class BuildProgress {
  readonly #started = new Map<number, number>();
  readonly #partial = new Map<number, string>();
  /** `write` returns a promise while stderr is full: a RUN's output waits on it (the other events are few) */
  constructor(private readonly write: (text: string) => void | Promise<void> = toWritable(process.stderr)) {}

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
        return this.#output(event.id, event.chunk.toString('utf8'));
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

  /** what the last line's write returned */
  #output(id: number, text: string): void | Promise<void> {
    const lines = ((this.#partial.get(id) ?? '') + text).split('\n');
    let rest = lines.pop()!;
    // output that never ends a line is shown in pieces rather than held without end
    if (rest.length >= MAX_PARTIAL_LINE) {
      lines.push(rest);
      rest = '';
    }
    this.#partial.set(id, rest);
    let written: void | Promise<void> = undefined;
    for (const line of lines) written = this.#line(id, line);
    return written;
  }

  #line(id: number, line: string): void | Promise<void> {
    const seconds = (Date.now() - (this.#started.get(id) ?? Date.now())) / 1000;
    return this.write(`#${id} ${seconds.toFixed(3)} ${line.replace(/\r$/, '')}\n`);
  }
}
