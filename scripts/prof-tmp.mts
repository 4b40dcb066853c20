import { openRegistryImage } from '/work/main/src/transport/registry/index.js';
import { writeDockerArchive } from '/work/main/src/transport/index.js';
import { createHash } from 'node:crypto';
import { createReadStream, rmSync } from 'node:fs';
import { pipeline } from 'node:stream/promises';
const t0 = () => process.hrtime.bigint();
const el = (t: bigint) => (Number(process.hrtime.bigint() - t) / 1e9).toFixed(2);
for (let i = 0; i < 3; i++) {
  let T = t0();
  const image = await openRegistryImage('docker://127.0.0.1:5999/t/a:1', { spoolTars: true, keepBlobs: false });
  const o = el(T); T = t0();
  await image.fetchLayers();
  const f = el(T); T = t0();
  await writeDockerArchive([{ image, tags: ['x:1'] }], '/tmp/pull-out.tar');
  const w = el(T); T = t0();
  const h = createHash('sha256'); await pipeline(createReadStream('/tmp/pull-out.tar', { highWaterMark: 1 << 20 }), h);
  const hs = el(T); T = t0();
  await image.close();
  console.log(`open ${o} fetch ${f} write ${w} hash ${hs} close ${el(T)}`);
  rmSync('/tmp/pull-out.tar');
}
