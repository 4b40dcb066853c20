// The build's progress as BuildKit's plain output shows it, and what it does with a stderr that is full.
import test from 'ava';
import { PassThrough } from 'node:stream';
import { BuildProgress } from '../../src/cli/build-progress.js';
import { toWritable } from '../../src/vm/agent-client.js';

test('output lines are numbered by their vertex and timed; DONE flushes the last partial line', (t) => {
  const written: string[] = [];
  const progress = new BuildProgress((text) => void written.push(text));
  progress.onEvent({ type: 'vertex', id: 3, name: '[build 2/4] RUN make' });
  progress.onEvent({ type: 'output', id: 3, chunk: Buffer.from('cc -o app main.c\nld') });
  progress.onEvent({ type: 'output', id: 3, chunk: Buffer.from(' app\r\nlast') });
  progress.onEvent({ type: 'done', id: 3, seconds: 3.14 });
  t.is(written[0], '#3 [build 2/4] RUN make\n');
  t.deepEqual(written.slice(1, -1).map((line) => line.replace(/^#3 \d+\.\d{3} /, '')), ['cc -o app main.c\n', 'ld app\n', 'last\n']);
  t.is(written.at(-1), '#3 DONE 3.1s\n');
});

test('output to a full stderr returns a promise that settles when it drains, so the guest waits', async (t) => {
  const stderr = new PassThrough({ highWaterMark: 16 });
  const progress = new BuildProgress(toWritable(stderr));
  progress.onEvent({ type: 'vertex', id: 1, name: '[1/2] RUN yes' });
  const waiting = progress.onEvent({ type: 'output', id: 1, chunk: Buffer.from('y\n'.repeat(100)) });
  t.true(waiting instanceof Promise, 'the full stream slows the producer down');
  t.is(stderr.listenerCount('drain'), 1, 'one wait, not one per line');
  let settled = false;
  void (waiting as Promise<void>).then(() => (settled = true));
  await new Promise((resolve) => setImmediate(resolve));
  t.false(settled, 'not before the reader took what was written');
  stderr.resume();
  await waiting;
  t.true(settled);
});

test('output that never ends a line is passed on in pieces rather than held', (t) => {
  const written: string[] = [];
  const progress = new BuildProgress((text) => void written.push(text));
  progress.onEvent({ type: 'vertex', id: 1, name: '[1/2] RUN yes | tr -d "\\n"' });
  for (let i = 0; i < 40; i++) progress.onEvent({ type: 'output', id: 1, chunk: Buffer.alloc(4096, 'y') });
  const shown = written.slice(1).reduce((n, line) => n + line.replace(/^#1 \d+\.\d{3} /, '').length - 1, 0);
  t.true(shown >= 64 * 1024, `${shown} of ${40 * 4096} bytes shown before the step ended`);
});
