// Checking a layer tar's entries while it is copied: every entry is parsed as untrusted input (no
// absolute paths, no "..", a well-formed tar to the end), and the copy fails if one is not.
import { PassThrough, Transform, type Readable, type TransformCallback } from 'node:stream';
import { readTar } from '../layer/tar.js';

/** `input` passed through unchanged, failing with readTar's error (naming `source` and the entry) on a bad entry. */
export function checkTarEntries(input: Readable, source: string): Readable {
  const feed = new PassThrough();
  feed.on('error', () => {}); // readTar destroys it when done; late writes must not throw
  let finished = false;
  let resume: (() => void) | undefined;
  const parsing = (async () => {
    // Bodies are skipped at once rather than left to tar-stream's own draining.
    for await (const { body } of readTar(feed, { source })) body.resume();
  })().finally(() => {
    finished = true;
    resume?.();
  });
  const output = new Transform({
    transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) {
      if (finished || feed.write(chunk)) {
        callback(null, chunk);
        return;
      }
      resume = () => {
        resume = undefined;
        callback(null, chunk);
      };
      feed.once('drain', () => resume?.());
    },
    flush(callback: TransformCallback) {
      feed.end();
      parsing.then(() => callback(), callback);
    },
  });
  parsing.catch((err: unknown) => output.destroy(err as Error));
  input.on('error', (err) => output.destroy(err));
  output.on('close', () => {
    if (!input.destroyed) input.destroy();
    if (!feed.destroyed) feed.destroy();
  });
  return input.pipe(output);
}
