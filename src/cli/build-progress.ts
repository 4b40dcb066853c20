// Build progress on stderr as BuildKit's plain output shows it: every step a numbered vertex, then
// CACHED, or its output line by line with the seconds since it started, then DONE with its duration.
//   #2 [build 2/4] RUN make
//   #2 0.412 cc -o app main.c
//   #2 DONE 3.1s
import type { BuildEvent } from '../executor/events.js';

export class BuildProgress {
  readonly #started = new Map<number, number>();
  readonly #partial = new Map<number, string>();

  constructor(private readonly write: (text: string) => void = (text) => void process.stderr.write(text)) {}

  readonly onEvent = (event: BuildEvent): void => {
    switch (event.type) {
      case 'vertex':
        this.#started.set(event.id, Date.now());
        this.write(`#${event.id} ${event.name}\n`);
        break;
      case 'cached':
        this.write(`#${event.id} CACHED\n`);
        break;
      case 'output':
        this.#output(event.id, event.chunk.toString('utf8'));
        break;
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
    this.#partial.set(id, lines.pop()!);
    for (const line of lines) this.#line(id, line);
  }

  #line(id: number, line: string): void {
    const seconds = (Date.now() - (this.#started.get(id) ?? Date.now())) / 1000;
    this.write(`#${id} ${seconds.toFixed(3)} ${line.replace(/\r$/, '')}\n`);
  }
}
