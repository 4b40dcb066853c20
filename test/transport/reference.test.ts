import test from 'ava';
import { parseImageReference } from '../../src/transport/index.js';
import { ImageReferenceError } from '../../src/errors.js';

test('a plain path is a docker-archive', (t) => {
  t.deepEqual(parseImageReference('out/image.tar.gz'), { transport: 'docker-archive', path: 'out/image.tar.gz', text: 'out/image.tar.gz' });
});

test('docker-archive: with and without NAME:TAG, and @N', (t) => {
  t.like(parseImageReference('docker-archive:a.tar'), { transport: 'docker-archive', path: 'a.tar' });
  t.like(parseImageReference('docker-archive:a.tar:localhost:5000/my/app:1.0'), { path: 'a.tar', name: 'localhost:5000/my/app', tag: '1.0' });
  t.like(parseImageReference('docker-archive:a.tar:@2'), { path: 'a.tar', index: 2 });
  for (const bad of ['docker-archive:', 'docker-archive:a.tar:app', 'docker-archive:a.tar:App:1', 'docker-archive:a.tar:@x']) {
    const err = t.throws(() => parseImageReference(bad), { instanceOf: ImageReferenceError });
    t.true(err!.message.includes(bad), err!.message);
  }
});

test('oci: and oci-archive: with an optional REF', (t) => {
  t.like(parseImageReference('oci:layout'), { transport: 'oci', path: 'layout', ref: undefined });
  t.like(parseImageReference('oci:layout:example.com/app:1.0'), { transport: 'oci', path: 'layout', ref: 'example.com/app:1.0' });
  t.like(parseImageReference('oci-archive:x.tar:latest'), { transport: 'oci-archive', path: 'x.tar', ref: 'latest' });
  t.throws(() => parseImageReference('oci:'), { instanceOf: ImageReferenceError });
  t.throws(() => parseImageReference('oci:dir:bad ref'), { instanceOf: ImageReferenceError });
});

test('docker:// expands Docker Hub names and keeps other hosts', (t) => {
  t.like(parseImageReference('docker://alpine'), {
    transport: 'docker', name: 'docker.io/library/alpine', tag: 'latest', registry: 'registry-1.docker.io', repository: 'library/alpine',
    registryRef: 'registry-1.docker.io/library/alpine:latest',
  });
  t.like(parseImageReference('docker://docker.io/me/app:2'), { registry: 'registry-1.docker.io', repository: 'me/app', tag: '2' });
  const digest = `sha256:${'a'.repeat(64)}`;
  const pinned = parseImageReference(`docker://localhost:5000/app@${digest}`);
  t.like(pinned, { registry: 'localhost:5000', repository: 'app', digest, tag: undefined, registryRef: `localhost:5000/app@${digest}` });
  for (const bad of ['docker:alpine', 'docker://Alpine', 'docker://app@sha256:abc', 'docker://app:bad tag']) {
    t.throws(() => parseImageReference(bad), { instanceOf: ImageReferenceError }, bad);
  }
});

test('unsupported transports are named', (t) => {
  const err = t.throws(() => parseImageReference('containers-storage:app'), { instanceOf: ImageReferenceError });
  t.regex(err!.message, /containers-storage: transport is not supported/);
});
