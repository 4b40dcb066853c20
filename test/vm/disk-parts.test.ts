// A disk made of several files end to end (many layer images on one disk): QEMU's own
// block layer, through qemu-img, reads back each file at the offset partsOf gave it, zeros after a
// file that does not fill its last sector, and nothing of the files' order mixed up.
import test from 'ava';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { VmError } from '../../src/errors.js';
import { partsOf, vmdkDescriptor } from '../../src/vm/disks.js';

test('partsOf + vmdkDescriptor: QEMU reads the files in place, each at its offset, sector-padded with zeros', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'dockvm-disk-parts-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  // sizes: whole sectors, a part of one, a single byte more than one
  const contents = [Buffer.alloc(4096, 'a'), Buffer.alloc(1000, 'b'), Buffer.alloc(513, 'c'), Buffer.alloc(512, 'd')];
  const files = await Promise.all(contents.map(async (data, i) => {
    const path = join(dir, `part,${i}.img`); // a comma, which QEMU's option syntax would split on
    await writeFile(path, data);
    return path;
  }));
  const parts = await partsOf(files);
  t.deepEqual(parts.map(({ offset, size }) => [offset, size]), [[0, 4096], [4096, 1024], [5120, 1024], [6144, 512]]);

  const descriptor = join(dir, 'disk.vmdk');
  await writeFile(descriptor, vmdkDescriptor(parts));
  const raw = join(dir, 'disk.raw');
  await execa('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', descriptor, raw]);
  const disk = await readFile(raw);
  t.is(disk.length, 6656);
  parts.forEach((part, i) => {
    const data = contents[i]!;
    t.true(disk.subarray(part.offset, part.offset + data.length).equals(data), `part ${i} at ${part.offset}`);
    t.true(disk.subarray(part.offset + data.length, part.offset + part.size).equals(Buffer.alloc(part.size - data.length)), `zeros after part ${i}`);
  });
});

test('vmdkDescriptor refuses a file name that would break the descriptor', (t) => {
  t.throws(() => vmdkDescriptor([{ path: '/cache/a"b.sqfs', offset: 0, size: 512 }]), { instanceOf: VmError, message: /quote or a line break/ });
});
