// Small stream helpers for tests.
import { Readable } from 'node:stream';

export async function collect(stream: AsyncIterable<Buffer | string>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
  return Buffer.concat(chunks);
}

/** Feed `data` in chunks of odd, varying sizes (1, 7, 13, 511, 513, …) to exercise stream parsers. */
export function oddChunks(data: Buffer, sizes: readonly number[] = [1, 7, 13, 511, 513, 4099]): Readable {
  const chunks: Buffer[] = [];
  let at = 0;
  let i = 0;
  while (at < data.length) {
    const size = sizes[i++ % sizes.length]!;
    chunks.push(data.subarray(at, at + size));
    at += size;
  }
  return Readable.from(chunks);
}
