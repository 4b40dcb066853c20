// The host's end of the agent channel: requests by id over one framed stream (a unix socket to QEMU's
// virtio-serial chardev, or the vsock bridge's stdio). Commands stream stdout/stderr; stdin is sent in
// a window the agent acknowledges, so a command that reads slowly never makes the agent buffer much.
import { constants } from 'node:os';
import type { Duplex, Readable, Writable } from 'node:stream';
import { ScriptError, VmError } from '../errors.js';
import {
  type ExitStatus,
  type Frame,
  FrameParser,
  type BeginRequest,
  type Hello,
  MessageType,
  decodeExit,
  decodeHello,
  encodeBegin,
  encodeExec,
  encodeFrame,
  encodePut,
  encodeU32,
  encodeWindowSize,
} from './protocol.js';

/** stdin bytes in flight to the agent before we wait for its acknowledgement */
const STDIN_WINDOW = 256 * 1024;
const STDIN_CHUNK = 64 * 1024;
/** the agent refuses files larger than this either way ("small file" transfer; bulk data goes over disks) */
export const MAX_FILE_BYTES = 15 * 1024 * 1024;

/**
 * Where a command's output goes. A sink that cannot take more returns a promise: the channel stops being
 * read until it settles, so a guest that prints faster than the output is read waits instead of being
 * held in dockvm's memory.
 */
export type OutputSink = (chunk: Buffer) => void | Promise<void>;

export interface ExecOptions {
  /** program and arguments; argv[0] is looked up in the command's own PATH */
  readonly argv: readonly string[];
  /** the command's whole environment, as NAME=value strings or a record (default: PATH only) */
  readonly env?: readonly string[] | Readonly<Record<string, string>>;
  /** working directory in the guest (default "/") */
  readonly cwd?: string;
  /** bytes or a stream for the command's stdin (default: empty) */
  readonly stdin?: Readable | Buffer | string;
  /** run on a pty: stdout and stderr arrive together as stdout */
  readonly tty?: boolean | { readonly rows: number; readonly cols: number };
  /** called with each chunk of output; return a promise to slow the guest down until it settles */
  readonly onStdout?: OutputSink;
  readonly onStderr?: OutputSink;
}

export type ExecResult = ExitStatus;

/** A command running in the guest. */
export interface RunningCommand {
  /** settles when the command has exited and all its output was delivered */
  readonly result: Promise<ExecResult>;
  kill(signal?: NodeJS.Signals | number): void;
  resize(rows: number, cols: number): void;
}

const DEFAULT_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

function envList(env: ExecOptions['env']): string[] {
  if (env === undefined) return [DEFAULT_PATH];
  if (Array.isArray(env)) return [...(env as readonly string[])];
  return Object.entries(env as Record<string, string>).map(([k, v]) => `${k}=${v}`);
}

interface Pending {
  onFrame(frame: Frame): void | Promise<void>;
  fail(err: Error): void;
}

export class AgentClient {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closedWith: Error | undefined;
  private readonly helloPromise: Promise<Hello>;
  private resolveHello!: (hello: Hello) => void;
  private rejectHello!: (err: Error) => void;
  private readonly parser = new FrameParser();

  /**
   * `onLinkLost` decides what a dropped channel means (the VM owner knows whether QEMU died and why);
   * without it the client fails every request with a generic VmError.
   */
  constructor(
    private readonly link: Duplex,
    onLinkLost: (err: Error) => void = (err) => this.close(err),
  ) {
    this.helloPromise = new Promise<Hello>((resolve, reject) => {
      this.resolveHello = resolve;
      this.rejectHello = reject;
    });
    this.helloPromise.catch(() => {}); // observed by whoever awaits hello(); never unhandled
    link.on('error', (err) => onLinkLost(new VmError(`the agent channel failed: ${err.message}`, { cause: err })));
    link.on('close', () => onLinkLost(new VmError("the VM's agent went away")));
    this.parser.on('error', (err) => {
      this.close(err instanceof VmError ? err : new VmError(String(err)));
      link.destroy();
    });
    this.parser.on('data', (frame: Frame) => this.dispatch(frame));
    link.pipe(this.parser);
  }

  /** The agent's hello: versions and transport. */
  hello(): Promise<Hello> {
    return this.helloPromise;
  }

  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  /** Fail every request in flight with `err` and refuse new ones. */
  close(err: Error): void {
    if (this.closedWith) return;
    this.closedWith = err;
    this.rejectHello(err);
    for (const pending of this.pending.values()) pending.fail(err);
    this.pending.clear();
  }

  private dispatch(frame: Frame): void {
    if (frame.type === MessageType.hello) {
      this.resolveHello(decodeHello(frame.payload));
      return;
    }
    const pending = this.pending.get(frame.id);
    if (pending === undefined) return; // a late frame for a request we already gave up on
    const slow = pending.onFrame(frame);
    if (slow instanceof Promise) {
      // backpressure: stop parsing (and so reading the channel) until the consumer caught up
      this.parser.pause();
      slow.then(
        () => this.parser.resume(),
        (err: unknown) => {
          this.parser.resume();
          pending.fail(err instanceof Error ? err : new Error(String(err)));
          this.pending.delete(frame.id);
        },
      );
    }
  }

  private send(type: MessageType, id: number, payload?: Buffer): void {
    if (this.closedWith) throw this.closedWith;
    this.link.write(encodeFrame(type, id, payload));
  }

  /** One request answered by ok/file/error. */
  private request(type: MessageType, payload: Buffer, what: string): Promise<Buffer> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    const id = this.nextId++;
    return new Promise<Buffer>((resolve, reject) => {
      this.pending.set(id, {
        onFrame: (frame) => {
          this.pending.delete(id);
          if (frame.type === MessageType.error) reject(new VmError(`${what} failed in the VM: ${frame.payload.toString('utf8')}`));
          else resolve(frame.payload);
        },
        fail: reject,
      });
      this.send(type, id, payload);
    });
  }

  async getFile(path: string): Promise<Buffer> {
    return this.request(MessageType.get, Buffer.from(path, 'utf8'), `reading ${path}`);
  }

  async putFile(path: string, data: Buffer | string, mode = 0o644): Promise<void> {
    const bytes = typeof data === 'string' ? Buffer.from(data) : data;
    if (bytes.length > MAX_FILE_BYTES) {
      throw new VmError(`cannot put ${path} into the VM: ${bytes.length} bytes is over the ${MAX_FILE_BYTES}-byte limit of the agent channel; pass big data on a disk`);
    }
    await this.request(MessageType.put, encodePut(path, bytes, mode), `writing ${path}`);
  }

  /**
   * Set the guest's clock, reseed its RNG and wait until it sees `disks`; resolves with the agent's hello
   * (a guest restored from a snapshot said its first hello to another QEMU).
   */
  async begin(request: BeginRequest): Promise<Hello> {
    return decodeHello(await this.request(MessageType.begin, encodeBegin(request), 'starting the build in the VM'));
  }

  /** Ask the agent to sync and power off; resolves when it acknowledged. */
  async shutdown(): Promise<void> {
    await this.request(MessageType.shutdown, Buffer.alloc(0), 'shutdown');
  }

  spawn(options: ExecOptions): RunningCommand {
    if (options.argv.length === 0) throw new VmError('exec needs a command: argv is empty');
    const id = this.nextId++;
    const tty = options.tty === undefined || options.tty === false ? undefined : options.tty === true ? { rows: 24, cols: 80 } : options.tty;
    const argv0 = options.argv[0]!;
    let window = STDIN_WINDOW;
    let windowOpened: (() => void) | undefined;
    let stdinDone = false;

    const result = new Promise<ExecResult>((resolve, reject) => {
      this.pending.set(id, {
        onFrame: (frame) => {
          switch (frame.type) {
            case MessageType.stdout:
              return options.onStdout?.(frame.payload);
            case MessageType.stderr:
              return options.onStderr?.(frame.payload);
            case MessageType.stdinAck:
              if (frame.payload.length !== 4) throw new VmError('the agent sent a malformed stdin window');
              window += frame.payload.readUInt32BE(0);
              windowOpened?.();
              return;
            case MessageType.exit: {
              // decoded first: a malformed exit closes the channel, which fails this command while it is still pending
              const status = decodeExit(frame.payload);
              this.pending.delete(id);
              stdinDone = true;
              windowOpened?.();
              resolve(status);
              return;
            }
            case MessageType.error:
              this.pending.delete(id);
              stdinDone = true;
              windowOpened?.();
              reject(new ScriptError(`${frame.payload.toString('utf8')}`, { command: argv0 }));
              return;
            default:
              return;
          }
        },
        fail: (err) => {
          stdinDone = true;
          windowOpened?.();
          reject(err);
        },
      });
    });

    this.send(
      MessageType.exec,
      id,
      encodeExec({ argv: options.argv, env: envList(options.env), cwd: options.cwd ?? '/', tty: tty !== undefined, rows: tty?.rows ?? 0, cols: tty?.cols ?? 0 }),
    );

    const writeStdin = async (chunk: Buffer): Promise<void> => {
      for (let at = 0; at < chunk.length && !stdinDone; ) {
        while (window <= 0 && !stdinDone) await new Promise<void>((r) => (windowOpened = r));
        if (stdinDone) return;
        const piece = chunk.subarray(at, at + Math.min(STDIN_CHUNK, window));
        window -= piece.length;
        at += piece.length;
        this.send(MessageType.stdin, id, piece);
      }
    };
    const feed = async (): Promise<void> => {
      const input = options.stdin;
      if (Buffer.isBuffer(input) || typeof input === 'string') await writeStdin(Buffer.from(input));
      else if (input !== undefined) {
        for await (const chunk of input as AsyncIterable<Buffer | string>) {
          if (stdinDone) break;
          await writeStdin(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
        }
      }
      if (!stdinDone && !this.closedWith) this.send(MessageType.stdin, id, Buffer.alloc(0));
    };
    const fed = feed();
    fed.catch(() => {}); // a stdin stream that fails: the command still ends (its stdin just stops)

    const kill = (signal: NodeJS.Signals | number = 'SIGTERM'): void => {
      const number = typeof signal === 'number' ? signal : constants.signals[signal];
      if (!this.closedWith && this.pending.has(id)) this.send(MessageType.signal, id, encodeU32(number));
    };
    const resize = (rows: number, cols: number): void => {
      if (!this.closedWith && this.pending.has(id)) this.send(MessageType.windowSize, id, encodeWindowSize(rows, cols));
    };
    return { result, kill, resize };
  }

  exec(options: ExecOptions): Promise<ExecResult> {
    return this.spawn(options).result;
  }
}

/**
 * An onStdout/onStderr callback (an OutputSink; it takes text too) that writes into `stream`: while the
 * stream is full it returns one promise of its 'drain', however many writes found it full.
 */
export function toWritable(stream: Writable): (chunk: Buffer | string) => void | Promise<void> {
  let drained: Promise<void> | undefined;
  return (chunk) => {
    if (stream.write(chunk)) return;
    drained ??= new Promise<void>((resolve) =>
      stream.once('drain', () => {
        drained = undefined;
        resolve();
      }),
    );
    return drained;
  };
}
