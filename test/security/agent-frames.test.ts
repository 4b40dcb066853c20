// Issue 13, forged agent frames: a guest whose kernel a step took over can write anything on the agent
// channel. The host's client must turn each forgery into a VmError for the command in flight (never a
// crash of dockvm, never a hang), and a flood of output must pass through without piling up in memory.
// The guest side here is a stream the test writes; the framing itself: test/vm/protocol.test.ts.
import test from 'ava';
import { Duplex, PassThrough } from 'node:stream';
import { VmError } from '../../src/errors.js';
import { AgentClient } from '../../src/vm/agent-client.js';
import { MessageType, encodeFrame } from '../../src/vm/protocol.js';

/** A client whose agent is `guest`: what the test writes there is what the "agent" sent. */
async function connected(): Promise<{ client: AgentClient; guest: PassThrough }> {
  const guest = new PassThrough();
  const link = Duplex.from({ readable: guest, writable: new PassThrough().resume() });
  const client = new AgentClient(link);
  guest.write(encodeFrame(MessageType.hello, 0, Buffer.from('protocol=1\nagent=0.1.0\nkernel=6.1\ntransport=serial\n')));
  await client.hello();
  return { client, guest };
}

const header = (length: number, type: number, id: number) => {
  const b = Buffer.alloc(9);
  b.writeUInt32BE(length, 0);
  b.writeUInt8(type, 4);
  b.writeUInt32BE(id, 5);
  return b;
};

// the first exec of a fresh client has id 1
const forgeries: [string, Buffer, RegExp][] = [
  ['a frame length of 4 GiB', header(0xffffffff, MessageType.stdout, 1), /impossible length 4294967295/],
  ['a frame shorter than its header', header(2, MessageType.stdout, 1), /impossible length 2/],
  ['an exit status of 3 bytes', encodeFrame(MessageType.exit, 1, Buffer.from([0, 0, 0])), /malformed exit message/],
  ['a stdin window grant of 1 byte', encodeFrame(MessageType.stdinAck, 1, Buffer.from([1])), /malformed stdin window/],
];

for (const [what, bytes, message] of forgeries) {
  test(`${what}: the command in flight fails with a VmError, the client refuses more, dockvm goes on`, async (t) => {
    const { client, guest } = await connected();
    const exec = client.exec({ argv: ['true'] });
    guest.write(bytes);
    const error = await t.throwsAsync(exec);
    t.regex(error!.message, message);
    t.true(error instanceof VmError, `${error?.constructor.name}: ${error?.message}`);
    t.true(client.closed, 'the channel is closed: nothing more is believed');
    await t.throwsAsync(async () => client.exec({ argv: ['true'] }), { instanceOf: VmError });
  });
}

test('frames of unknown types and for ids never asked for are ignored; the command still gets its own exit', async (t) => {
  const { client, guest } = await connected();
  const exec = client.exec({ argv: ['true'] });
  guest.write(encodeFrame(200 as MessageType, 1, Buffer.from('what is this')));
  guest.write(encodeFrame(MessageType.exit, 77, Buffer.alloc(8)));
  guest.write(encodeFrame(MessageType.ok, 0xffffffff));
  guest.write(encodeFrame(MessageType.exit, 1, Buffer.from([0, 0, 0, 3, 0, 0, 0, 0])));
  t.deepEqual(await exec, { exitCode: 3 });
});

test('a flood of 256 MiB of output passes through the callback without the client keeping it', async (t) => {
  const { client, guest } = await connected();
  let seen = 0;
  const exec = client.exec({ argv: ['yes'], onStdout: (chunk) => void (seen += chunk.length) });
  const frame = encodeFrame(MessageType.stdout, 1, Buffer.alloc(1 << 20, 0x79));
  global.gc?.();
  const before = process.memoryUsage().rss;
  let peak = before;
  for (let i = 0; i < 256; i++) {
    if (!guest.write(frame)) await new Promise((resolve) => guest.once('drain', resolve));
    peak = Math.max(peak, process.memoryUsage().rss);
  }
  guest.write(encodeFrame(MessageType.exit, 1, Buffer.alloc(8)));
  t.deepEqual(await exec, { exitCode: 0 });
  t.is(seen, 256 << 20);
  t.log(`RSS ${Math.round(before / 2 ** 20)} MiB → peak ${Math.round(peak / 2 ** 20)} MiB over 256 MiB of output`);
  t.true(peak - before < 128 << 20, 'far less than the flood stays in memory');
});
