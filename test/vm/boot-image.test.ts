// The kernel is booted from its uncompressed ELF when it has a PVH entry: extracted from the bzImage once.
import { mkdtemp, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
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
  t.deepEqual(await bootImage(kernel, { ...env, DOCKVM_BOOT_PROTOCOL: 'bzImage' }), { path: kernel.kernel, protocol: 'bzImage', kernelDigest: image.kernelDigest });
});

/**
 * A tiny bzImage whose gzip payload is an "ELF" with a PVH note followed by `body`: just what bootImage
 * reads (setup header 2.15, payload offset and length); equal-length bodies give equal-length files.
 */
function fakeBzImage(body: string): Buffer {
  const pvhNote = Buffer.from([4, 0, 0, 0, 8, 0, 0, 0, 18, 0, 0, 0, 0x58, 0x65, 0x6e, 0]);
  const elf = Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46]), pvhNote, Buffer.from(body)]);
  const payload = gzipSync(elf, { level: 0 }); // stored: its length depends only on the body's
  const setup = Buffer.alloc(1024); // one setup sector after the boot sector: the payload starts at 1024
  setup.writeUInt8(1, 0x1f1);
  setup.write('HdrS', 0x202, 'latin1');
  setup.writeUInt16LE(0x020f, 0x206);
  setup.writeUInt32LE(0, 0x248);
  setup.writeUInt32LE(payload.length, 0x24c);
  return Buffer.concat([setup, payload]);
}

test('a kernel file replaced by another of the same size and mtime gets its own vmlinux, not the old one', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'dockvm-boot-image-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const env = { ...process.env, DOCKVM_CACHE: join(dir, 'cache'), DOCKVM_BOOT_PROTOCOL: undefined };
  const kernel = { architecture: 'amd64' as const, kernel: join(dir, 'vmlinuz'), modulesDir: null, release: 'custom', source: 'DOCKVM_KERNEL' as const };
  const mtime = new Date('2026-01-01T00:00:00Z'); // whole seconds: utimes keeps them exactly
  await writeFile(kernel.kernel, fakeBzImage('kernel one'));
  await utimes(kernel.kernel, mtime, mtime);
  const firstStat = await stat(kernel.kernel);
  const first = await bootImage(kernel, env);
  t.is(first.protocol, 'pvh');
  t.true((await readFile(first.path)).toString().endsWith('kernel one'));

  // what cp -p, tar or dpkg-deb -x can do: new content, the old file's size and mtime
  await writeFile(kernel.kernel, fakeBzImage('kernel two'));
  await utimes(kernel.kernel, mtime, mtime);
  t.deepEqual([(await stat(kernel.kernel)).size, (await stat(kernel.kernel)).mtimeMs], [firstStat.size, firstStat.mtimeMs], 'same size and mtime');
  const second = await bootImage(kernel, env);
  t.not(second.kernelDigest, first.kernelDigest);
  t.true((await readFile(second.path)).toString().endsWith('kernel two'), 'the vmlinux of the new kernel');
  t.true((await readFile(first.path)).toString().endsWith('kernel one'), 'the old one is left as it was');
  t.deepEqual(await bootImage(kernel, env), second, 'and found again');
});
