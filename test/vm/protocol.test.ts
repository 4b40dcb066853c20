// The agent protocol's host side: frames survive any chunking, payloads encode as vm/agent.c reads them.
import test from 'ava';
import { collect, oddChunks } from '../helpers/streams.js';
import { VmError } from '../../src/errors.js';
import {
  type Frame,
  FrameParser,
  MessageType,
  decodeExit,
  decodeHello,
  encodeExec,
  encodeFrame,
  encodePut,
} from '../../src/vm/protocol.js';

async function parse(bytes: Buffer, sizes?: number[]): Promise<Frame[]> {
  const frames: Frame[] = [];
  const parser = oddChunks(bytes, sizes).pipe(new FrameParser());
  for await (const frame of parser) frames.push(frame as Frame);
  return frames;
}

const big = Buffer.from(Buffer.alloc(200_000, 0).map((_, i) => (i * 7919) % 251));
const stream = Buffer.concat([
  encodeFrame(MessageType.hello, 0, Buffer.from('protocol=1\nagent=0.1.0\nkernel=6.1\ntransport=serial\n')),
  encodeFrame(MessageType.stdout, 3, Buffer.from('hello\n')),
  encodeFrame(MessageType.ok, 4),
  encodeFrame(MessageType.stderr, 0xfffffffe, big),
  encodeFrame(MessageType.exit, 3, Buffer.from([0, 0, 0, 42, 0, 0, 0, 0])),
]);

for (const sizes of [[1], [2, 3], [7, 13, 511, 513, 4099], [65536], [stream.length]]) {
  test(`frames come out whole and in order when fed in chunks of ${sizes.join(',')} bytes`, async (t) => {
    const frames = await parse(stream, sizes);
    t.deepEqual(
      frames.map((f) => [f.type, f.id, f.payload.length]),
      [
        [MessageType.hello, 0, 51],
        [MessageType.stdout, 3, 6],
        [MessageType.ok, 4, 0],
        [MessageType.stderr, 0xfffffffe, big.length],
        [MessageType.exit, 3, 8],
      ],
    );
    t.true(frames[3]!.payload.equals(big));
    t.deepEqual(decodeHello(frames[0]!.payload), { protocol: 1, agent: '0.1.0', kernel: '6.1', transport: 'serial' });
    t.deepEqual(decodeExit(frames[4]!.payload), { exitCode: 42 });
  });
}

test('a stream that stops inside a frame is a VmError that says how much was left', async (t) => {
  const cut = stream.subarray(0, stream.length - 3);
  const err = await t.throwsAsync(parse(cut, [5, 17]), { instanceOf: VmError });
  t.regex(err!.message, /ended inside a frame \(\d+ bytes left over\)/);
});

test('an impossible frame length is refused before buffering it', async (t) => {
  const bad = Buffer.from([0xff, 0xff, 0xff, 0xff, 4, 0, 0, 0, 1]);
  const err = await t.throwsAsync(collect(oddChunks(bad, [3]).pipe(new FrameParser())), { instanceOf: VmError });
  t.regex(err!.message, /impossible length 4294967295/);
});

test('exit by signal decodes to the signal name and no exit code', (t) => {
  t.deepEqual(decodeExit(Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 9])), { exitCode: null, signal: 'SIGKILL' });
});

test('exec payload: flags, window size, counts, then NUL-terminated cwd, argv and env', (t) => {
  const payload = encodeExec({ argv: ['sh', '-c', 'echo é'], env: ['A=1'], cwd: '/tmp', tty: true, rows: 40, cols: 132 });
  t.is(payload[0], 1);
  t.is(payload.readUInt16BE(1), 40);
  t.is(payload.readUInt16BE(3), 132);
  t.is(payload.readUInt32BE(5), 3);
  t.is(payload.readUInt32BE(9), 1);
  t.deepEqual(payload.subarray(13).toString('utf8').split('\0'), ['/tmp', 'sh', '-c', 'echo é', 'A=1', '']);
  t.throws(() => encodeExec({ argv: ['a\0b'], env: [], cwd: '/', tty: false, rows: 0, cols: 0 }), { instanceOf: VmError, message: /NUL/ });
});

test('put payload: mode, path, data', (t) => {
  const payload = encodePut('/etc/x', Buffer.from('data'), 0o100755);
  t.is(payload.readUInt32BE(0), 0o755);
  t.is(payload.subarray(4).toString('latin1'), '/etc/x\0data');
});
