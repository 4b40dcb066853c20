// Issue 13, forged output: the guest is root and can write any upper manifest it likes onto the output
// disk (it can replace the agent that writes it), so the host reads it as it reads any tar from the
// internet. Each forgery here gets one error naming the problem, or a correct layer; the host writes
// nothing but the layer file, and its memory stays bounded. (The paths a tar may not hold, extents
// outside the disk, counts that lie: test/layer/upper-manifest.test.ts.)
import test from 'ava';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { writeLayerFromEntries } from '../../src/layer/layer-file.js';
import { readUpperManifest } from '../../src/layer/upper-manifest.js';
import { boundedEntries, ext4InodeCount, layerContentProblem } from '../../src/layer/layer-bound.js';
import { createScratchDisk } from '../../src/vm/disks.js';
import { type ManifestEntry, record, writeManifest } from './manifest.js';

function dir(t: { teardown(fn: () => void): void }): string {
  const path = mkdtempSync(join(tmpdir(), 'dockvm-security-forged-'));
  t.teardown(() => rmSync(path, { recursive: true, force: true }));
  return path;
}

/** The manifest of `entries` as the build's output; `disk` the scratch disk (4 KiB of zeros). */
function forged(t: { teardown(fn: () => void): void }, entries: Iterable<ManifestEntry | Buffer>) {
  const root = dir(t);
  const path = join(root, 'out.disk');
  const size = writeManifest(path, entries);
  const disk = join(root, 'scratch.ext4');
  writeFileSync(disk, Buffer.alloc(4096));
  return { root, out: join(root, 'layer.tar'), source: { path, size, disk, source: 'the build VM\'s output for RUN evil' } };
}

const refused: [string, ManifestEntry[], RegExp][] = [
  [
    'an absolute symlink, then a file written through it',
    [{ path: 'etc', type: 'l', link: '/etc' }, { path: 'etc/passwd', inline: Buffer.from('root::0:0::/:/bin/sh\n') }],
    /entry "etc\/passwd" lies under "etc", which is a symlink, not a directory/,
  ],
  [
    'a relative symlink out of the layer, then a directory and a file through it',
    [{ path: 'up', type: 'l', link: '../../..' }, { path: 'up/tmp', type: 'd' }, { path: 'up/tmp/x', inline: Buffer.from('x') }],
    /entry "up\/tmp" lies under "up", which is a symlink/,
  ],
  ['a hard link to a name outside the layer', [{ path: 'shadow', type: 'h', link: 'etc/shadow' }], /hard link "shadow" points to "etc\/shadow", which the layer does not hold/],
  ['a hard link with ".."', [{ path: 'h', type: 'h', link: '../../etc/shadow' }], /"\.\." component/],
  ['a ".." name', [{ path: '../../../tmp/pwned', inline: Buffer.from('x') }], /"\.\." component/],
  ['an absolute name', [{ path: '/tmp/pwned', inline: Buffer.from('x') }], /absolute path/],
  ['a name of 64 KiB', [{ path: 'a'.repeat(65536) }], /has a name of 65536 bytes \(Linux allows 255\)/],
  ['a path longer than 64 KiB', [{ path: 'a/'.repeat(32768) + 'b' }], /a length of 65537 bytes \(at most 65536\)/],
];

for (const [what, entries, message] of refused) {
  test(`${what}: one error naming it, and nothing written`, async (t) => {
    const f = forged(t, entries);
    const error = await t.throwsAsync(async () => writeLayerFromEntries(readUpperManifest(f.source), f.out, { source: f.source.source }));
    t.regex(error!.message, message);
    t.true(error!.message.startsWith('the build VM\'s output for RUN evil: '), error!.message);
    t.false(error!.message.includes('\n'), 'one line');
    t.false(existsSync(f.out), 'no layer');
    t.deepEqual(readdirSync(f.root).sort(), ['out.disk', 'scratch.ext4'], 'nothing written beside it either');
  });
}

test('a sparse file of 1 TiB: refused before the host writes a byte of it, naming the file', (t) => {
  const f = forged(t, [{ path: 'var', type: 'd' }, { path: 'var/huge', size: 2 ** 40 }, { path: 'small', inline: Buffer.from('fine\n') }]);
  const entries = [...readUpperManifest(f.source)];
  t.is(entries.length, 4, 'the reader holds the hole as one piece, not a TiB');
  t.is(
    layerContentProblem(entries, 8192 * 1024 * 1024),
    'its layer would hold 1048577 MiB of file content, more than the 8192 MiB scratch disk it was made on (a sparse file? a layer stores its holes as zeros); the largest file is "var/huge", 1048576 MiB',
  );
  t.is(layerContentProblem(entries.filter(({ entry }) => entry.path !== 'var/huge'), 8192 * 1024 * 1024), undefined, 'the rest is fine');
  t.false(existsSync(f.out));
});

test('more entries than the scratch disk has inodes: refused at the first one past the count (the count read from the image the host made)', async (t) => {
  const root = dir(t);
  const scratch = join(root, 'scratch.ext4');
  await createScratchDisk(scratch, 8);
  const inodes = ext4InodeCount(scratch);
  t.is(inodes, 2048, 'mkfs.ext4 gives an 8 MiB disk 2048 inodes');
  function* many() {
    for (let i = 0; ; i++) yield { path: `f${i}` };
  }
  const result = boundedEntries(many(), inodes);
  t.is(result, 'its layer lists more than 2048 entries, more than the scratch disk it was made on has inodes (a forged manifest?)');
});

const probe = fileURLToPath(new URL('./many-entries-probe.ts', import.meta.url));

test('many empty files: the host\'s memory grows by under 2 KiB an entry (measured in a process of its own)', async (t) => {
  const count = 200_000;
  function* entries() {
    for (let d = 0; d < count / 1000; d++) yield record({ path: `d${d}`, type: 'd' });
    for (let i = 0; i < count; i++) yield record({ path: `d${Math.floor(i / 1000)}/f${i}` });
  }
  const f = forged(t, entries());
  const { stdout } = await execa('node', ['--import=tsx', probe, f.source.path, f.source.disk, f.out]);
  const { before, after, entries: written } = JSON.parse(stdout) as { before: number; after: number; entries: number };
  const perEntry = ((after - before) * 1024) / written;
  t.log(`${written} entries: peak RSS ${Math.round(before / 1024)} MiB → ${Math.round(after / 1024)} MiB, ${Math.round(perEntry)} bytes an entry`);
  t.is(written, count + count / 1000);
  t.true(perEntry < 2048, `${Math.round(perEntry)} bytes an entry`);
});
