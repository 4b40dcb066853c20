// Verify layer tars read in place (Layer.localTar) against their diff_ids. Reading by position skips
// the verification a layer's openTar() stream does, so the bytes are hashed here, on a worker thread
// while the reader runs (native export, the docker-archive writer): hashing costs no wall time on a
// machine with a second core. Readers await the verdict before writing the end of what they write, so a
// mismatch never produces a complete tar.
import { Worker } from 'node:worker_threads';
import { DigestMismatchError } from '../errors.js';
import type { Digest } from '../image/digest.js';

export interface LocalTarToCheck {
  path: string;
  offset: number;
  size: number;
  diffId: Digest;
  /** names the layer in the error */
  what: string;
}

// Plain CommonJS, run with `eval` and no execArgv: no module resolution and no loaders, the same under
// tsx and from dist/.
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { openSync, readSync, closeSync } = require('node:fs');
const { createHash } = require('node:crypto');
const buffer = Buffer.allocUnsafe(4 << 20);
for (const { path, offset, size } of workerData) {
  const fd = openSync(path, 'r');
  const hash = createHash('sha256');
  let done = 0;
  try {
    while (done < size) {
      const n = readSync(fd, buffer, 0, Math.min(buffer.length, size - done), offset + done);
      if (n === 0) break;
      hash.update(buffer.subarray(0, n));
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  parentPort.postMessage({ digest: 'sha256:' + hash.digest('hex'), size: done });
}
`;

export interface Verification {
  /** resolves when every tar matched its diff_id; rejects with a DigestMismatchError naming the layer */
  readonly done: Promise<void>;
  /** stop hashing (the export failed or was abandoned) */
  cancel(): Promise<void>;
}

export function verifyLocalTars(tars: readonly LocalTarToCheck[]): Verification {
  if (tars.length === 0) return { done: Promise.resolve(), cancel: async () => {} };
  const worker = new Worker(WORKER, { eval: true, execArgv: [], workerData: tars.map(({ path, offset, size }) => ({ path, offset, size })) });
  let next = 0;
  const done = new Promise<void>((resolve, reject) => {
    worker.on('message', ({ digest, size }: { digest: Digest; size: number }) => {
      const tar = tars[next++]!;
      if (size !== tar.size || digest !== tar.diffId) {
        const got = size !== tar.size ? `${size} of ${tar.size} bytes` : digest;
        reject(new DigestMismatchError(`${tar.what}: content does not match its diff_id: expected ${tar.diffId}, got ${got}`, { digest: tar.diffId }));
        void worker.terminate();
      } else if (next === tars.length) {
        resolve();
      }
    });
    worker.on('error', reject);
    worker.on('exit', () => reject(new Error('layer verification stopped before it finished')));
  });
  done.catch(() => {}); // observed by the caller when it awaits; not an unhandled rejection meanwhile
  return {
    done,
    cancel: async () => {
      await worker.terminate();
    },
  };
}
