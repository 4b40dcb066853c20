// What QEMU boots. An arm64 Image as it is (QEMU's virt machine loads it directly). An x86 kernel: its
// uncompressed ELF (vmlinux) through its PVH entry point when it has one, else the bzImage as it is. Measured here under TCG (Debian cloud 6.1, microvm): agent ready in a median
// 1.9 s from the ELF against 3.0 s from the bzImage, which first decompresses itself (LZ4, 53 MB) in the
// emulated CPU. The ELF is extracted once on the host into the cache, keyed by the kernel file's content
// (not its path, size and mtime, which a replaced kernel can keep: cp -p, dpkg-deb -x, tar).
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { VmError } from '../errors.js';
import type { GuestKernel } from './kernel.js';
import { ARCHITECTURES } from './architectures.js';
import { cacheDir } from '../cache-dir.js';
import { writeAtomically } from '../output.js';
import { memoized } from './file-memo.js';

export interface BootImage {
  readonly path: string;
  /** pvh: an ELF vmlinux entered in 32-bit protected mode; bzImage: the usual x86 boot protocol; Image: arm64's */
  readonly protocol: 'pvh' | 'bzImage' | 'Image';
  /** sha256 (hex) of the kernel file it comes from: what caches of things booted from it key on */
  readonly kernelDigest: string;
}

const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);
/** An ELF note "Xen", type 18 (XEN_ELFNOTE_PHYS32_ENTRY), 4- or 8-byte address: the PVH entry QEMU looks for. */
const PVH_NOTES = [4, 8].map((descsz) => Buffer.from([4, 0, 0, 0, descsz, 0, 0, 0, 18, 0, 0, 0, 0x58, 0x65, 0x6e, 0]));

export function hasPvhEntry(elf: Buffer): boolean {
  return elf.subarray(0, 4).equals(ELF_MAGIC) && PVH_NOTES.some((note) => elf.includes(note));
}

/**
 * The compressed kernel inside a bzImage: the setup header (boot protocol >= 2.08) gives its offset and
 * length; its last four bytes are the uncompressed size (arch/x86/boot/compressed/mkpiggy.c).
 */
export function bzImagePayload(bz: Buffer): { data: Buffer; size: number } | undefined {
  if (bz.length < 0x250 || bz.toString('latin1', 0x202, 0x206) !== 'HdrS' || bz.readUInt16LE(0x206) < 0x208) return undefined;
  const setupSectors = bz.readUInt8(0x1f1) || 4;
  const start = (setupSectors + 1) * 512 + bz.readUInt32LE(0x248);
  const data = bz.subarray(start, start + bz.readUInt32LE(0x24c));
  if (data.length < 8) return undefined;
  return { data, size: data.readUInt32LE(data.length - 4) };
}

/** LZ4 "legacy" frames, as the kernel's build writes them: magic, then (u32 size, block)… */
export function lz4LegacyDecompress(src: Buffer, outSize: number): Buffer {
  const out = Buffer.allocUnsafe(outSize);
  let ip = 4;
  let op = 0;
  while (ip + 4 <= src.length && op < outSize) {
    const size = src.readUInt32LE(ip);
    ip += 4;
    if (size === 0x184c2102) continue; // another frame's magic
    if (size > src.length - ip) break; // the trailing uncompressed-size word
    const end = ip + size;
    while (ip < end) {
      const token = src[ip++]!;
      let literals = token >>> 4;
      if (literals === 15) {
        let b: number;
        do literals += b = src[ip++]!; while (b === 255);
      }
      src.copy(out, op, ip, ip + literals);
      op += literals;
      ip += literals;
      if (ip >= end) break;
      const offset = src[ip]! | (src[ip + 1]! << 8);
      ip += 2;
      let length = token & 15;
      if (length === 15) {
        let b: number;
        do length += b = src[ip++]!; while (b === 255);
      }
      length += 4;
      let from = op - offset;
      if (offset === 0 || from < 0) throw new VmError('corrupt LZ4 data in the kernel image');
      if (offset >= length) {
        out.copy(out, op, from, from + length);
        op += length;
      } else {
        for (let k = 0; k < length; k++) out[op++] = out[from++]!;
      }
    }
  }
  if (op !== outSize) throw new VmError(`the kernel image's LZ4 payload gave ${op} bytes, its header says ${outSize}`);
  return out;
}

function decompress(payload: { data: Buffer; size: number }): Buffer | undefined {
  const { data, size } = payload;
  if (data[0] === 0x1f && data[1] === 0x8b) return gunzipSync(data);
  if (data.readUInt32LE(0) === 0x184c2102) return lz4LegacyDecompress(data, size);
  return undefined; // xz, zstd, bzip2, lzma, lzo: boot the bzImage
}

/**
 * The image to boot for `kernel`: a cached PVH vmlinux when one can be had, else the kernel file. Found
 * once by content, then remembered while the kernel file is unchanged (file-memo.ts): reading and hashing
 * it costs 0.1-0.2 s of every start on a busy host.
 */
export function bootImage(kernel: GuestKernel, env: NodeJS.ProcessEnv = process.env): Promise<BootImage> {
  return memoized('boot-image', [kernel.kernel, env.DOCKVM_BOOT_PROTOCOL ?? '', cacheDir(env)], async () => ({ value: await findBootImage(kernel, env), files: [kernel.kernel] }), {
    env,
    usable: (image) => existsSync(image.path),
  });
}

async function findBootImage(kernel: GuestKernel, env: NodeJS.ProcessEnv): Promise<BootImage> {
  // Reading and hashing the whole file costs ~20 ms for Debian's 14 MB bzImage, against a 2-3 s boot.
  const file = await readFile(kernel.kernel).catch(() => undefined);
  if (file === undefined) throw new VmError(`the guest kernel ${kernel.kernel} does not exist; run kernel/fetch --refresh or fix DOCKVM_KERNEL`);
  const kernelDigest = createHash('sha256').update(file).digest('hex');
  const asIs = (protocol: BootImage['protocol']): BootImage => ({ path: kernel.kernel, protocol, kernelDigest });
  if (ARCHITECTURES[kernel.architecture].kernelFormat === 'Image') return asIs('Image');
  if (env.DOCKVM_BOOT_PROTOCOL === 'bzImage') return asIs('bzImage');
  if (file.subarray(0, 4).equals(ELF_MAGIC)) return asIs(hasPvhEntry(file) ? 'pvh' : 'bzImage');
  const key = kernelDigest.slice(0, 24);
  const dir = join(cacheDir(env), 'kernel', 'pvh');
  const elfPath = join(dir, `${key}.vmlinux`);
  const notPvh = join(dir, `${key}.bzImage-only`);
  if (existsSync(elfPath)) return { path: elfPath, protocol: 'pvh', kernelDigest };
  if (existsSync(notPvh)) return asIs('bzImage');

  const payload = bzImagePayload(file);
  const elf = payload && decompress(payload);
  await mkdir(dir, { recursive: true });
  if (!elf || !hasPvhEntry(elf)) {
    await writeFile(notPvh, ''); // remember, so the next boot does not decompress again
    return asIs('bzImage');
  }
  await writeAtomically(elfPath, (temp) => writeFile(temp, elf));
  return { path: elfPath, protocol: 'pvh', kernelDigest };
}
