// The kernel is booted from its uncompressed ELF when it has a PVH entry: extracted from the bzImage once.
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { VmError } from '../../src/errors.js';
import { bootImage, bzImagePayload, hasPvhEntry, lz4LegacyDecompress } from '../../src/vm/boot-image.js';
import { resolveKernel } from '../../src/vm/kernel.js';

test('LZ4 legacy frames decode, overlapping matches included; a short result is an error', (t) => {
  // "abc", then a 9-byte match at offset 3 (overlaps its own output), then "X"; then the size trailer
  const block = Buffer.from([0x35, 0x61, 0x62, 0x63, 0x03, 0x00, 0x10, 0x58]);
  const frame = Buffer.concat([Buffer.from([0x02, 0x21, 0x4c, 0x18]), Buffer.from([block.length, 0, 0, 0]), block, Buffer.from([13, 0, 0, 0])]);
  t.is(lz4LegacyDecompress(frame, 13).toString(), 'abcabcabcabcX');
  t.throws(() => lz4LegacyDecompress(frame, 14), { instanceOf: VmError, message: /gave 13 bytes, its header says 14/ });
});

test('the Debian kernel boots through PVH: the cached image is its decompressed ELF, found again without work', async (t) => {
  const kernel = await resolveKernel();
  // a cache of its own, so that this test sees the extraction happen, then not happen again
  const cache = await mkdtemp(join(tmpdir(), 'dockvm-boot-image-'));
  t.teardown(() => rm(cache, { recursive: true, force: true }));
  const env = { ...process.env, DOCKVM_CACHE: cache };
  const image = await bootImage(kernel, env);
  t.is(image.protocol, 'pvh');
  t.true(image.path.startsWith(cache));
  const elf = await readFile(image.path);
  t.true(hasPvhEntry(elf));
  const payload = bzImagePayload(await readFile(kernel.kernel));
  t.is(elf.length, payload!.size);
  const before = await stat(image.path);
  t.deepEqual(await bootImage(kernel, env), image);
  const after = await stat(image.path);
  t.deepEqual([after.ino, after.mtimeMs], [before.ino, before.mtimeMs], 'the cached ELF was not written again');
  t.deepEqual(await bootImage(kernel, { ...env, DOCKVM_BOOT_PROTOCOL: 'bzImage' }), { path: kernel.kernel, protocol: 'bzImage' });
});
