// The host side of the agent protocol (vm/agent.c): frames and their payloads.
// Frame: u32 length (big-endian; counts type + id + payload), u8 type, u32 id (big-endian), payload.
import { constants } from 'node:os';
import { Transform, type TransformCallback } from 'node:stream';
import { VmError } from '../errors.js';

export const PROTOCOL_VERSION = 2;

export const MessageType = {
  hello: 1,
  exec: 2,
  stdin: 3,
  stdout: 4,
  stderr: 5,
  exit: 6,
  signal: 7,
  windowSize: 8,
  put: 9,
  get: 10,
  file: 11,
  ok: 12,
  error: 13,
  shutdown: 14,
  stdinAck: 15,
  begin: 16,
} as const;
export type MessageType = (typeof MessageType)[keyof typeof MessageType];

export interface Frame {
  readonly type: number;
  readonly id: number;
  readonly payload: Buffer;
}

/** Frames the agent accepts are capped at 16 MiB; what it sends is far smaller, but allow the same. */
export const MAX_FRAME = 16 * 1024 * 1024;
const HEADER = 9;

export function encodeFrame(type: MessageType, id: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(HEADER);
  head.writeUInt32BE(payload.length + 5, 0);
  head.writeUInt8(type, 4);
  head.writeUInt32BE(id, 5);
  return Buffer.concat([head, payload]);
}

/** Cuts a byte stream into frames, whatever the chunking; a bad length is a VmError. */
export class FrameParser extends Transform {
  private buffered: Buffer[] = [];
  private size = 0;

  constructor() {
    super({ readableObjectMode: true });
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.buffered.push(chunk);
    this.size += chunk.length;
    try {
      this.drain();
      done();
    } catch (err) {
      done(err as Error);
    }
  }

  override _flush(done: TransformCallback): void {
    done(this.size === 0 ? null : new VmError(`the agent's stream ended inside a frame (${this.size} bytes left over)`));
  }

  private drain(): void {
    while (this.size >= HEADER) {
      let first = this.buffered[0]!;
      if (first.length < 4) {
        first = Buffer.concat(this.buffered, this.size);
        this.buffered = [first];
      }
      const length = first.readUInt32BE(0);
      if (length < 5 || length > MAX_FRAME + 5) throw new VmError(`the agent sent a frame of impossible length ${length}`);
      // join the chunks only once the whole frame is here, so a big frame in small chunks costs one copy
      if (this.size < 4 + length) return;
      let data = this.buffered.length === 1 ? first : Buffer.concat(this.buffered, this.size);
      this.push({ type: data.readUInt8(4), id: data.readUInt32BE(5), payload: Buffer.from(data.subarray(HEADER, 4 + length)) } satisfies Frame);
      data = data.subarray(4 + length);
      this.buffered = data.length === 0 ? [] : [data];
      this.size = data.length;
    }
  }
}

export interface ExecRequest {
  readonly argv: readonly string[];
  readonly env: readonly string[];
  readonly cwd: string;
  readonly tty: boolean;
  readonly rows: number;
  readonly cols: number;
}

function cstrings(values: readonly string[]): Buffer {
  for (const v of values) if (v.includes('\0')) throw new VmError(`cannot pass a string containing NUL to the agent: ${JSON.stringify(v)}`);
  return Buffer.from(values.map((v) => `${v}\0`).join(''), 'utf8');
}

export function encodeExec(request: ExecRequest): Buffer {
  const head = Buffer.alloc(13);
  head.writeUInt8(request.tty ? 1 : 0, 0);
  head.writeUInt16BE(request.rows, 1);
  head.writeUInt16BE(request.cols, 3);
  head.writeUInt32BE(request.argv.length, 5);
  head.writeUInt32BE(request.env.length, 9);
  return Buffer.concat([head, cstrings([request.cwd, ...request.argv, ...request.env])]);
}

export function encodePut(path: string, data: Buffer, mode: number): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt32BE(mode & 0o7777, 0);
  return Buffer.concat([head, cstrings([path]), data]);
}

export function encodeU32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(value, 0);
  return b;
}

/**
 * What the guest must be told before a build starts in it, booted or restored from a snapshot (which has
 * the clock and the random state of the moment it was saved, and no disks): the wall clock, a random
 * seed to reseed its RNG with, and the disks to wait for (hot-added, found by name).
 */
export interface BeginRequest {
  /** milliseconds since the epoch */
  readonly clockMs: number;
  /** 32 to 256 random bytes */
  readonly seed: Buffer;
  /** the names of the disks the guest must see before it answers (what QemuDisk.name gives them) */
  readonly disks: readonly string[];
}

export function encodeBegin(request: BeginRequest): Buffer {
  if (request.seed.length < 32 || request.seed.length > 256) throw new VmError(`a begin message carries 32 to 256 bytes of seed, not ${request.seed.length}`);
  const head = Buffer.alloc(14);
  head.writeBigUInt64BE(BigInt(Math.floor(request.clockMs)), 0);
  head.writeUInt16BE(request.seed.length, 8);
  head.writeUInt32BE(request.disks.length, 10);
  return Buffer.concat([head, request.seed, cstrings(request.disks)]);
}

export function encodeWindowSize(rows: number, cols: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt16BE(rows, 0);
  b.writeUInt16BE(cols, 2);
  return b;
}

export interface ExitStatus {
  /** the exit code, or null when a signal ended the command */
  readonly exitCode: number | null;
  /** the signal's name (e.g. "SIGKILL") when one ended it */
  readonly signal?: NodeJS.Signals;
}

const signalNames = new Map<number, NodeJS.Signals>(
  Object.entries(constants.signals).map(([name, number]) => [number, name as NodeJS.Signals]),
);

export function decodeExit(payload: Buffer): ExitStatus {
  if (payload.length < 8) throw new VmError('the agent sent a malformed exit message');
  const code = payload.readInt32BE(0);
  const signal = payload.readInt32BE(4);
  if (signal !== 0) return { exitCode: null, signal: signalNames.get(signal) ?? (`SIG${signal}` as NodeJS.Signals) };
  return { exitCode: code };
}

export interface Hello {
  readonly protocol: number;
  readonly agent: string;
  readonly kernel: string;
  readonly transport: string;
}

export function decodeHello(payload: Buffer): Hello {
  const fields = new Map<string, string>();
  for (const line of payload.toString('utf8').split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) fields.set(line.slice(0, eq), line.slice(eq + 1));
  }
  return {
    protocol: Number(fields.get('protocol') ?? NaN),
    agent: fields.get('agent') ?? 'unknown',
    kernel: fields.get('kernel') ?? 'unknown',
    transport: fields.get('transport') ?? 'unknown',
  };
}
