// The store of RUN --mount=type=cache content (src/cache/cache-mounts.ts), without a VM: the tar the guest
// wrote is read as untrusted (hostile paths, a hard link to nothing, a truncated tar are refused and the
// stored content stays); one tar per (id, platform); sharing=locked waits for the lock, private gets none
// while it is held, a dead build's lock is taken over.
import test from 'ava';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { execaSync } from 'execa';
import { CacheMountStore } from '../../src/cache/cache-mounts.js';
import { readTar, type TarEntry } from '../../src/layer/tar.js';
import { writeTar } from '../helpers/tar.js';

function store(t: { teardown(fn: () => void): void }): CacheMountStore {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-cache-mounts-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return new CacheMountStore(join(dir, 'mounts'));
}

const dir = (path: string, extra: Partial<TarEntry> = {}): TarEntry => ({ path, type: 'directory', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 1, ...extra });
const file = (path: string, size: number, extra: Partial<TarEntry> = {}): TarEntry => ({ path, type: 'file', mode: 0o644, uid: 0, gid: 0, size, mtime: 1, ...extra });

async function listing(path: string): Promise<string[]> {
  const seen: string[] = [];
  for await (const { entry, body } of readTar(Readable.from(readFileSync(path)), { source: path })) {
    const chunks: Buffer[] = [];
    for await (const chunk of body) chunks.push(chunk as Buffer);
    seen.push(`${entry.type} ${entry.path || '.'} ${entry.mode.toString(8)} ${entry.uid}${entry.linkname ? ` -> ${entry.linkname}` : ''}${entry.size ? ` ${Buffer.concat(chunks).toString()}` : ''}`);
  }
  return seen;
}

test('keep stores what it read (root metadata, files, links); open finds it per id and platform', async (t) => {
  const s = store(t);
  const tar = await writeTar([
    [dir('', { mode: 0o700, uid: 1000 })],
    [file('a.deb', 3), Buffer.from('deb')],
    [{ ...file('b.deb', 0), type: 'link', linkname: 'a.deb' }],
    [{ ...file('latest', 0), type: 'symlink', linkname: '/var/cache/x/a.deb' }],
  ]);
  await s.keep('/var/cache/x', 'linux/amd64', () => Readable.from(tar));
  const path = await s.open('/var/cache/x', 'linux/amd64');
  t.truthy(path);
  t.deepEqual(await listing(path!), ['directory . 700 1000', 'file a.deb 644 0 deb', 'link b.deb 644 0 -> a.deb', 'symlink latest 644 0 -> /var/cache/x/a.deb']);
  t.is(await s.open('/var/cache/x', 'linux/arm64'), undefined, 'another platform has its own');
  t.is(await s.open('other', 'linux/amd64'), undefined, 'another id has its own');
});

test('a hostile or broken tar from the guest is refused by name, and the stored content stays', async (t) => {
  const s = store(t);
  const good = await writeTar([[dir('')], [file('good', 2), Buffer.from('ok')]]);
  await s.keep('c', 'linux/amd64', () => Readable.from(good));
  const before = readFileSync(s.path('c', 'linux/amd64'));
  const cases: [string, Buffer, RegExp][] = [
    ['a ".." path', await writeTar([[file('../escape', 1), Buffer.from('x')]]), /"\.\.\/escape" has a "\.\." component/],
    ['an absolute path', await writeTar([[file('/etc/passwd', 1), Buffer.from('x')]]), /"\/etc\/passwd" has an absolute path/],
    ['a hard link to no earlier entry', await writeTar([[{ ...file('l', 0), type: 'link', linkname: 'missing' }]]), /hard link "l" points to "missing", which is not an earlier entry/],
    ['a truncated tar', (await writeTar([[file('big', 4096), Buffer.alloc(4096)]])).subarray(0, 1024), /not a valid tar/],
  ];
  for (const [what, tar, error] of cases) {
    await t.throwsAsync(s.keep('c', 'linux/amd64', () => Readable.from(tar)), { message: error }, what);
    t.deepEqual(readFileSync(s.path('c', 'linux/amd64')), before, `${what}: the stored content stays`);
  }
});

test('locked waits for the lock; private gets none while it is held; a dead build\'s lock is taken over', async (t) => {
  const s = store(t);
  const held = await s.lock('c', 'linux/amd64', { wait: true });
  t.truthy(held);
  t.is(await s.lock('c', 'linux/amd64', { wait: false }), undefined, 'private: the lock is taken');
  let waitedFor: number | undefined;
  let got = false;
  const waiting = s.lock('c', 'linux/amd64', { wait: true, onWait: (pid) => (waitedFor = pid) }).then((lock) => {
    got = true;
    return lock;
  });
  await new Promise((resolve) => setTimeout(resolve, 600));
  t.false(got, 'locked: waits while another holds it');
  t.is(waitedFor, process.pid, 'and says whose it is');
  await held!.release();
  const second = await waiting;
  t.truthy(second, 'locked: gets it once released');
  await second!.release();

  // a lock left by a process that is gone
  const dead = execaSync('sh', ['-c', 'echo $$']).stdout.trim();
  writeFileSync(`${s.path('c', 'linux/amd64')}.lock`, `${dead}\n`);
  const taken = await s.lock('c', 'linux/amd64', { wait: false });
  t.truthy(taken, 'a stale lock is taken over');
  t.is(readFileSync(`${s.path('c', 'linux/amd64')}.lock`, 'utf8'), `${process.pid}\n`);
  await taken!.release();
});
