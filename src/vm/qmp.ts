// QEMU's machine protocol (QMP) over one stream: JSON objects, one per line. dockvm uses it for what the
// command line cannot say: saving a booted guest (stop, migrate), restoring one (migrate-incoming, cont)
// and attaching disks to a running guest (device_add). Commands go one at a time, in order; events are
// kept for whoever waits for them.
import type { Duplex } from 'node:stream';
import { VmError } from '../errors.js';

export interface QmpEvent {
  readonly event: string;
  readonly data?: Readonly<Record<string, unknown>>;
}

interface Waiter {
  readonly match: (event: QmpEvent) => boolean;
  readonly resolve: (event: QmpEvent) => void;
  readonly reject: (err: Error) => void;
}

/** One QMP session; `ready()` settles once QEMU greeted us and accepted qmp_capabilities. */
export class Qmp {
  private buffered = '';
  private readonly replies: { resolve: (value: unknown) => void; reject: (err: Error) => void; command: string }[] = [];
  private readonly waiters = new Set<Waiter>();
  private readonly events: QmpEvent[] = [];
  private closedWith: Error | undefined;
  private greeted!: () => void;
  private readonly greeting: Promise<void>;
  private readonly negotiated: Promise<void>;

  constructor(private readonly link: Duplex) {
    this.greeting = new Promise((resolve) => (this.greeted = resolve));
    link.setEncoding('utf8');
    link.on('data', (text: string) => this.onData(text));
    link.on('error', (err) => this.close(new VmError(`QEMU's control channel failed: ${err.message}`, { cause: err })));
    link.on('close', () => this.close(new VmError("QEMU's control channel closed")));
    this.negotiated = this.greeting.then(() => this.execute('qmp_capabilities').then(() => undefined));
    this.negotiated.catch(() => {}); // observed by ready()
  }

  ready(): Promise<void> {
    return this.negotiated;
  }

  /** Run one command; resolves with its "return" value, rejects with QEMU's error description. */
  execute(command: string, args?: Readonly<Record<string, unknown>>): Promise<unknown> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    return new Promise((resolve, reject) => {
      this.replies.push({ resolve, reject, command });
      this.link.write(`${JSON.stringify(args === undefined ? { execute: command } : { execute: command, arguments: args })}\n`);
    });
  }

  /** The first event (already received or still to come) that `match` accepts; it is consumed. */
  waitEvent(match: (event: QmpEvent) => boolean): Promise<QmpEvent> {
    const seen = this.events.findIndex(match);
    if (seen >= 0) return Promise.resolve(this.events.splice(seen, 1)[0]!);
    if (this.closedWith) return Promise.reject(this.closedWith);
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { match, resolve: (event) => (this.waiters.delete(waiter), resolve(event)), reject };
      this.waiters.add(waiter);
    });
  }

  close(err: Error): void {
    if (this.closedWith) return;
    this.closedWith = err;
    for (const reply of this.replies.splice(0)) reply.reject(err);
    for (const waiter of this.waiters) waiter.reject(err);
    this.waiters.clear();
    this.link.destroy();
  }

  private onData(text: string): void {
    this.buffered += text;
    for (let end = this.buffered.indexOf('\n'); end >= 0; end = this.buffered.indexOf('\n')) {
      const line = this.buffered.slice(0, end).trim();
      this.buffered = this.buffered.slice(end + 1);
      if (line !== '') this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let message: { QMP?: unknown; return?: unknown; error?: { class?: string; desc?: string }; event?: string; data?: Record<string, unknown> };
    try {
      message = JSON.parse(line) as typeof message;
    } catch {
      this.close(new VmError(`QEMU's control channel sent something that is not JSON: ${line.slice(0, 200)}`));
      return;
    }
    if (message.QMP !== undefined) return this.greeted();
    if (message.event !== undefined) {
      const event: QmpEvent = { event: message.event, ...(message.data ? { data: message.data } : {}) };
      const waiter = [...this.waiters].find((w) => w.match(event));
      if (waiter) waiter.resolve(event);
      else this.events.push(event);
      return;
    }
    const reply = this.replies.shift();
    if (!reply) return;
    if (message.error) reply.reject(new VmError(`QEMU refused ${reply.command}: ${message.error.desc ?? message.error.class ?? 'no reason given'}`));
    else reply.resolve(message.return);
  }
}
