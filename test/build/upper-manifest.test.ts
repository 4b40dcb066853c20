// The build VM's upper turned into a layer three ways in one boot, over the Debian fixture: the manifest
// with file contents read from the scratch disk's image (what builds do), the same manifest with the
// contents copied in (what the guest does for a file whose extents it cannot give), and GNU tar in the
// guest (the way before). All three must give the same layer bytes, for a change list with every kind of
// entry: sparse, preallocated and unwritten extents, hard links of every type, devices, fifos, a socket,
// xattrs of every namespace (ACLs, capabilities, overlay's own), odd mtimes and names, a deep path,
// whiteouts and opaque directories; and a mid-size file (20 MiB) of several extents, holes and an
// unwritten range, which the host reads piece by piece (the path big layers take).
import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { withBuildVm } from '../../src/build/build-vm.js';
import { runStep, scriptLaunch } from '../../src/build/interpreter.js';
import { lowersFor } from '../../src/build/lowers.js';
import { createUpperDisk, newDirectories, outDiskBytes, packUpper, writePackedLayer, type PackWay, type PackedUpper } from '../../src/build/vm-layer.js';
import { readTar, TarWriter, type TarEntry } from '../../src/layer/tar.js';
import { readUpperManifest } from '../../src/layer/upper-manifest.js';
import { openImage } from '../../src/transport/index.js';
import { qemuImgCreate } from '../../src/vm/index.js';
import { debianFixture } from '../fixtures/debian.js';
import { listing } from '../helpers/filesystem.js';
import { runDockvm } from '../helpers/peers.js';

/** a POSIX ACL as the kernel stores it (user::rw- user:1000:r-- group::r-- mask::r-- other::r--) */
const ACL = Buffer.from('AgAAAAEABgD/////AgAEAOgDAAAEAAQA/////xAABAD/////IAAEAP////8=', 'base64');
const CAPABILITY = Buffer.from('0100000200200000000000000000000000000000', 'hex');
const COMPONENT = 'd'.repeat(120);
// 3871 bytes: far beyond ustar's 255 (the guest's newdirs step, busybox find, stops at PATH_MAX)
const DEEP = Array.from({ length: 32 }, () => COMPONENT).join('/');

/** What copyToRoot brings in (GNU tar in the guest unpacks it with every xattr): what a script cannot make. */
async function writeCopyTar(path: string): Promise<void> {
  const writer = new TarWriter();
  const writing = pipeline(writer.stream, createWriteStream(path));
  const base = { uid: 0, gid: 0, size: 0, mtime: 1_700_000_000 };
  await writer.add({ ...base, path: 'srv', type: 'directory', mode: 0o755 });
  await writer.add({ ...base, path: 'srv/x', type: 'directory', mode: 0o750, xattrs: { 'user.dir': Buffer.from('1'), 'system.posix_acl_default': ACL } });
  const xattrs = {
    'system.posix_acl_access': ACL,
    'security.capability': CAPABILITY,
    'trusted.note': Buffer.from([0, 1, 2, 0xff, 10]),
    'user.a%3Db': Buffer.from('an = in the name'), // GNU tar's encoding of "user.a=b"
    'user.p%25q': Buffer.from('a % in the name'),
    'user.empty': Buffer.alloc(0),
  };
  await writer.add({ ...base, path: 'srv/x/attrs', type: 'file', mode: 0o644 /* what the ACL says */, size: 5, xattrs }, Buffer.from('attrs'));
  await writer.add({ ...base, path: 'srv/x/h1', type: 'file', mode: 0o644, size: 2 }, Buffer.from('h\n'));
  await writer.add({ ...base, path: 'srv/x/h2', type: 'link', mode: 0o644, linkname: 'srv/x/h1' });
  await writer.add({ ...base, path: 'srv/x/fifo', type: 'fifo', mode: 0o600, xattrs: { 'trusted.f': Buffer.from('3') } });
  await writer.add({ ...base, path: 'srv/x/chr', type: 'character-device', mode: 0o600, devmajor: 4095, devminor: 1048575, xattrs: { 'trusted.c': Buffer.from('4') } });
  await writer.add({ ...base, path: 'srv/x/blk', type: 'block-device', mode: 0o660, devmajor: 7, devminor: 0 });
  await writer.add({ ...base, path: 'srv/x/\xff\xfe', type: 'file', mode: 0o644, size: 4 }, Buffer.from('lati'));
  writer.finish();
  await writing;
}

const SCRIPT = `
set -e
cd /srv
head -c 3000000 /dev/urandom > random
printf tail > small
: > empty
truncate -s 6M sparse
printf a | dd of=sparse bs=1 seek=1000000 conv=notrunc status=none
printf b | dd of=sparse bs=1 seek=5000000 conv=notrunc status=none
truncate -s 7000001 sparse
fallocate -l 2M unwritten
printf c | dd of=unwritten bs=1 seek=1048576 conv=notrunc status=none
printf d > prealloc && fallocate -n -l 4M prealloc
: > empty-prealloc && fallocate -n -l 1M empty-prealloc
ln random random.hard
ln -s random symlink && ln -P symlink symlink.hard
mkfifo fifo && ln fifo fifo.hard
mknod null c 1 3 && ln null null.hard
perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Local => "/srv/socket", Listen => 1) or die "socket: $!"'
chown 3000000:3000001 random && chmod 4755 random
mkdir sticky && chmod 1777 sticky
chmod 000 small
touch -d '2001-02-03 04:05:06.999999999' small
touch -d @-5.5 empty && touch -h -d @-1.25 symlink
touch "$(printf 'new\\nline')"
perl -e 'for (1..32) { mkdir "${COMPONENT}" or die; chdir "${COMPONENT}" or die } open(F, ">file") or die; print F "deep\n"'
rm /etc/issue /etc/debian_version
rm -rf /var/cache/debconf && mkdir /var/cache/debconf && echo fresh > /var/cache/debconf/new
rm /etc/host.conf && mkdir /etc/host.conf
mv /usr/share/base-files /usr/share/base-files.moved
chmod 600 /etc/os-release && ln /etc/os-release /srv/os-release.hard
# 20 MiB: a hole, 3 MiB of data, 2 MiB more written after another file took the blocks that follow (a
# second extent with no hole between), a hole with 2 MiB unwritten in it, 1500001 bytes at an offset no
# block boundary, and a hole to the end
truncate -s 20M mid
head -c 3145728 /dev/urandom | dd of=mid bs=1M seek=1 conv=notrunc iflag=fullblock status=none
sync && head -c 1048576 /dev/urandom > spacer && sync
head -c 2097152 /dev/urandom | dd of=mid bs=1M seek=4 conv=notrunc iflag=fullblock status=none
fallocate -o 8M -l 2M mid
head -c 1500001 /dev/urandom | dd of=mid bs=1M seek=12000000 oflag=seek_bytes conv=notrunc iflag=fullblock status=none
sync
sha256sum mid
`;
const MID_SIZE = 20 * 2 ** 20;
const ways: PackWay[] = ['extents', 'inline', 'tar'];

function tempDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-upper-manifest-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The first `bytes` of `from` into a file of their own (the next pack step overwrites the output disk). */
async function copyHead(from: string, to: string, bytes: number): Promise<void> {
  await pipeline(createReadStream(from, { end: bytes - 1 }), createWriteStream(to));
}

async function fileContent(layer: string, path: string): Promise<Buffer> {
  for await (const { entry, body } of readTar(createReadStream(layer), { source: layer })) {
    if (entry.path !== path) continue;
    const chunks: Buffer[] = [];
    for await (const chunk of body) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  }
  throw new Error(`${path} is not in ${layer}`);
}

interface Packed {
  dir: string;
  layers: Map<PackWay, string>;
  packs: { way: PackWay; packed: PackedUpper; file: string }[];
  scratch: string;
  /** sha256 of srv/mid, as the guest computed it */
  midSha256: string;
}

/** One boot for both tests: the script run, the upper packed each way, a layer written from each. */
let booted: Promise<Packed> | undefined;
const packedOnce = (): Promise<Packed> => (booted ??= bootAndPack());
test.after.always(async () => {
  const packed = await booted?.catch(() => undefined);
  if (packed) rmSync(packed.dir, { recursive: true, force: true });
});

async function bootAndPack(): Promise<Packed> {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-upper-manifest-test-'));
  const image = await openImage(debianFixture());
  try {
    return { dir, ...(await packEachWay(dir, image)) };
  } finally {
    await image.close();
  }
}

async function packEachWay(dir: string, image: Awaited<ReturnType<typeof openImage>>): Promise<Omit<Packed, 'dir'>> {
  const lowers = await lowersFor(image, 'debian');
  const scratch = join(dir, 'scratch.ext4');
  const out = join(dir, 'out.disk');
  const copy = join(dir, 'copy.tar');
  await createUpperDisk(scratch, 128);
  await qemuImgCreate(out, outDiskBytes(128), 'raw');
  await writeCopyTar(copy);

  const { packs, newDirs, midSha256 } = await withBuildVm({ lowers, scratch, copy, out }, {}, async (vm) => {
    await vm.mustStep('mount');
    const run = await vm.step('run', runStep(['PATH=/usr/sbin:/usr/bin:/sbin:/bin'], scriptLaunch(SCRIPT)));
    if (run.exitCode !== 0) throw new Error(`the script failed: ${run.stderr}`);
    const midSha256 = /^([0-9a-f]{64}) {2}mid$/m.exec(run.stdout.toString())?.[1];
    if (!midSha256) throw new Error(`no sha256sum of mid in the script's output: ${run.stdout.toString()}`);
    const newDirs = await newDirectories(vm);
    const packs: { way: PackWay; packed: PackedUpper; file: string }[] = [];
    for (const way of ways) {
      const packed = await packUpper(vm, way);
      const file = join(dir, `${way}.out`);
      await copyHead(out, file, packed.bytes);
      packs.push({ way, packed, file });
    }
    return { packs, newDirs, midSha256 };
  });

  const layers = new Map<PackWay, string>();
  // no clamp that touches the guest's clock: the mtimes themselves must agree
  const clampMtime = 2 ** 33;
  for (const { way, packed, file } of packs) {
    const layer = join(dir, `${way}.layer.tar`);
    await writePackedLayer(packed, { out: file, scratch }, layer, { clampMtime, newDirs, diskSize: 128 });
    layers.set(way, layer);
  }
  return { layers, packs, scratch, midSha256 };
}

test('the upper manifest, with extents or inline contents, gives the layer bytes GNU tar in the guest gave, for every kind of entry', async (t) => {
  const { layers, packs } = await packedOnce();
  const [extents, inline, tar] = ways.map((way) => packs.find((p) => p.way === way)!.packed);
  const contentBytes = 3_000_000 + 7_000_001 + 2 * 2 ** 20 + MID_SIZE;
  t.true(extents!.bytes < 100_000, `the extents manifest holds no contents (${extents!.bytes} bytes)`);
  t.true(inline!.bytes > contentBytes, `the inline manifest holds them all (${inline!.bytes} bytes)`);
  t.is(extents!.upperKiB, tar!.upperKiB, 'the upper\'s size agrees with du -sk');

  const tarBytes = readFileSync(layers.get('tar')!);
  t.true(readFileSync(layers.get('extents')!).equals(tarBytes), 'extents: the same layer bytes as GNU tar');
  t.true(readFileSync(layers.get('inline')!).equals(tarBytes), 'inline: the same layer bytes as GNU tar');

  // and that layer holds what the script made
  const seen = await listing(layers.get('extents')!);
  t.like(seen.get('srv/x/attrs'), { type: 'file', size: 5 });
  t.deepEqual(Object.keys(seen.get('srv/x/attrs')?.xattrs ?? {}).sort(), [
    'security.capability',
    'system.posix_acl_access',
    'trusted.note',
    'user.a%3Db',
    'user.empty',
    'user.p%25q',
  ]);
  t.is(seen.get('srv/x/attrs')?.xattrs?.['system.posix_acl_access'], ACL.toString('hex'));
  t.is(seen.get('srv/x')?.xattrs?.['system.posix_acl_default'], ACL.toString('hex'));
  t.like(seen.get('srv/x/chr'), { type: 'character-device', dev: '4095,1048575', xattrs: { 'trusted.c': Buffer.from('4').toString('hex') } });
  t.like(seen.get('srv/x/h2'), { type: 'link', linkname: 'srv/x/h1' });
  t.like(seen.get('srv/random.hard'), { type: 'link', linkname: 'srv/random' });
  t.like(seen.get('srv/random'), { type: 'file', size: 3_000_000, uid: 3_000_000, gid: 3_000_001, mode: 0o4755 });
  t.like(seen.get('srv/symlink.hard'), { type: 'link', linkname: 'srv/symlink' });
  t.like(seen.get('srv/fifo.hard'), { type: 'fifo' }, 'GNU tar links only files and symlinks');
  t.like(seen.get('srv/null.hard'), { type: 'character-device', dev: '1,3' });
  t.like(seen.get('srv/small'), { mode: 0, mtime: 981173107 }, 'GNU tar\'s rounding of 04:05:06.999999999');
  t.like(seen.get('srv/prealloc'), { size: 1 });
  t.like(seen.get('srv/empty-prealloc'), { size: 0 });
  t.false(seen.has('srv/socket'), 'sockets are left out, as GNU tar leaves them');
  t.like(seen.get(`srv/${DEEP}/file`), { type: 'file', size: 5 });
  t.like(seen.get('etc/.wh.issue'), { type: 'file', size: 0 });
  t.true(seen.has('var/cache/debconf/.wh..wh..opq'));
  t.like(seen.get('etc/host.conf'), { type: 'directory' });
  t.false(seen.has('etc/host.conf/.wh..wh..opq'), 'a directory over a file of the lowers is new: no opaque marker');
  t.true(seen.has('usr/share/.wh.base-files') && seen.has('usr/share/base-files.moved/motd'), 'a lower directory renamed is copied whole');
  t.false([...seen.values()].some((e) => Object.keys(e.xattrs ?? {}).some((x) => x.startsWith('trusted.overlay.'))), 'no overlay xattrs');
  const sparse = await fileContent(layers.get('extents')!, 'srv/sparse');
  const expected = Buffer.alloc(7_000_001);
  expected[1_000_000] = 0x61;
  expected[5_000_000] = 0x62;
  t.true(sparse.equals(expected), 'holes read as zeros');
  const unwritten = await fileContent(layers.get('extents')!, 'srv/unwritten');
  t.is(unwritten.length, 2 * 2 ** 20);
  t.deepEqual([unwritten.indexOf(0x63), unwritten.lastIndexOf(0x63), unwritten.filter((b) => b !== 0).length], [1_048_576, 1_048_576, 1]);
  t.true((await fileContent(layers.get('extents')!, 'srv/x/\xff\xfe')).equals(Buffer.from('lati')));
});

test('a sparse file bigger than the output disk: the diskSize error, and no layer of zeros written', async (t) => {
  const dir = tempDir(t);
  const spec = join(dir, 'spec.json');
  // 3 GiB in the layer (tar stores holes as zeros), nothing on the scratch disk
  writeFileSync(spec, JSON.stringify({ name: 'sparse-test', fromImage: debianFixture(), diskSize: 16, runAsRoot: 'truncate -s 3G /sparse', output: 'out.tar' }));
  const run = await runDockvm(['run-as-root', spec]);
  t.is(run.exitCode, 1, run.stderr);
  t.regex(run.stderr, /^dockvm: diskSize 16 MiB was too small: the layer needed 3072 MiB \(sparse files count their full size\); set diskSize to at least 3840\n/m);
  t.false(existsSync(join(dir, 'out.tar')), 'no partial output');
});

test('a 20 MiB file of several extents, holes and an unwritten range: the same bytes from the scratch disk, inline and through GNU tar', async (t) => {
  const { layers, packs, scratch, midSha256 } = await packedOnce();
  // what the host reads it from: the extents the guest reported, the holes and unwritten range as zeros
  const manifest = packs.find((p) => p.way === 'extents')!;
  const mid = [...readUpperManifest({ path: manifest.file, size: manifest.packed.bytes, disk: scratch, source: 'test' })].find(({ entry }) => entry.path === 'srv/mid');
  const pieces = mid?.body && 'pieces' in mid.body ? mid.body.pieces : [];
  const data = pieces.filter((piece) => 'file' in piece);
  t.true(data.length >= 3, `several extents on the scratch disk (${data.length})`);
  t.true(pieces.filter((piece) => 'zeros' in piece).length >= 3, 'holes before, between and after them');
  t.true(pieces.some((piece) => 'zeros' in piece && piece.zeros >= 4 * 2 ** 20), 'the hole and the unwritten range between read as one run of zeros');
  const contents = await Promise.all(ways.map(async (way) => fileContent(layers.get(way)!, 'srv/mid')));
  for (const [i, way] of ways.entries()) {
    t.is(contents[i]!.length, MID_SIZE, `${way}: its full size`);
    t.is(createHash('sha256').update(contents[i]!).digest('hex'), midSha256, `${way}: the bytes the guest wrote`);
  }
});
