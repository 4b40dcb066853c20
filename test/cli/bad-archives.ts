// Broken image archives, one per way an archive can be broken, for the CLI tests of inspect and merge.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { layerTar } from '../fixtures/assemble.js';
import { configFor, gzip, sampleLayers, sha, tarOf } from '../transport/archives.js';

export interface BadArchive {
  /** file name of the archive */
  name: string;
  /** what the one-line error must say (besides the archive's path) */
  says: RegExp;
  /** whether inspect (which reads metadata and hashes uncompressed layers, but does not parse them) sees it */
  inspectSees: boolean;
}

export async function writeBadArchives(dir: string): Promise<BadArchive[]> {
  const { base, app } = await sampleLayers();
  const config = configFor([base, app]);
  const configName = `${sha(config)}.json`;
  const manifest = (layers: string[], cfg = configName) => JSON.stringify([{ Config: cfg, RepoTags: ['bad:1'], Layers: layers }]);
  const good = await tarOf([
    { path: configName, data: config }, { path: '1.tar', data: base }, { path: '2.tar', data: app },
    { path: 'manifest.json', data: manifest(['1.tar', '2.tar']) },
  ]);
  const flipped = Buffer.from(app);
  const at = flipped.indexOf('echo run');
  flipped[at] = flipped[at]! ^ 0x20; // "Echo run": same size, valid tar, wrong digest
  const hostile = async (path: string) => {
    const layer = await layerTar([{ path: 'etc', type: 'directory' }, { path, content: 'x' }]);
    const cfg = configFor([layer]);
    return tarOf([{ path: 'c.json', data: cfg }, { path: 'l.tar', data: layer }, { path: 'manifest.json', data: manifest(['l.tar'], 'c.json') }]);
  };
  const corruptGzip = gzip(good);
  corruptGzip.fill(0xff, 40, 60);
  const archives: [BadArchive, Buffer][] = [
    [{ name: 'corrupt-gzip.tar.gz', says: /corrupt gzip data/, inspectSees: true }, corruptGzip],
    [{ name: 'truncated.tar', says: /not a valid tar after entry "1\.tar".*truncated or corrupt/, inspectSees: true }, good.subarray(0, 3000)],
    [{ name: 'no-manifest.tar', says: /has no manifest\.json/, inspectSees: true }, await tarOf([{ path: configName, data: config }])],
    [{ name: 'bad-manifest.tar', says: /"manifest\.json": not valid JSON/, inspectSees: true }, await tarOf([{ path: 'manifest.json', data: '[{"Config": ' }])],
    [{ name: 'bad-config.tar', says: /config "c\.json": rootfs: /, inspectSees: true }, await tarOf([{ path: 'c.json', data: '{"architecture":"amd64","os":"linux"}' }, { path: 'manifest.json', data: manifest([], 'c.json') }])],
    [{ name: 'missing-layer.tar', says: /layer sha256:[0-9a-f]{64} is missing \(no entry "2\.tar" in the archive\)/, inspectSees: true }, await tarOf([
      { path: configName, data: config }, { path: '1.tar', data: base }, { path: 'manifest.json', data: manifest(['1.tar', '2.tar']) },
    ])],
    [{ name: 'flipped.tar', says: new RegExp(`layer "2\\.tar": content does not match its digest: expected sha256:${sha(app)}, got sha256:[0-9a-f]{64}`), inspectSees: true }, await tarOf([
      { path: configName, data: config }, { path: '1.tar', data: base }, { path: '2.tar', data: flipped }, { path: 'manifest.json', data: manifest(['1.tar', '2.tar']) },
    ])],
    [{ name: 'dotdot.tar', says: /layer sha256:[0-9a-f]{64}: entry "etc\/\.\.\/\.\.\/escape" has a "\.\." component/, inspectSees: false }, await hostile('etc/../../escape')],
    [{ name: 'absolute.tar', says: /layer sha256:[0-9a-f]{64}: entry "\/etc\/shadow" has an absolute path/, inspectSees: false }, await hostile('/etc/shadow')],
  ];
  for (const [{ name }, bytes] of archives) await writeFile(join(dir, name), bytes);
  return archives.map(([archive]) => archive);
}
