// Go's formatting, as BuildKit's history entries use it, and Go durations as HEALTHCHECK reads them.
import test from 'ava';
import { goDuration, goList, goQuote, goQuoteList, parseGoDuration } from '../../../src/frontend/containerfile/go-format.js';
import { canonicalJson, stepCacheInput, type RunStep } from '../../../src/plan/plan.js';

test('goQuote escapes like strconv.Quote: quotes, backslashes, control characters; keeps printable Unicode', (t) => {
  t.is(goQuote('echo "hi"'), '"echo \\"hi\\""');
  t.is(goQuote('a\\b\n\t\x01'), '"a\\\\b\\n\\t\\x01"');
  t.is(goQuote('안녕 ü'), '"안녕 ü"');
  t.is(goQuote('\u00a0'), '"\\u00a0"');
});

test('%q and %v of a []string', (t) => {
  t.is(goQuoteList(['/bin/sh', '-c', 'echo hi']), '["/bin/sh" "-c" "echo hi"]');
  t.is(goQuoteList([]), '[]');
  t.is(goList(['/data', '/logs']), '[/data /logs]');
});

test('durations parse and print as Go does', (t) => {
  t.is(parseGoDuration('30s'), 30e9);
  t.is(parseGoDuration('1m30s'), 90e9);
  t.is(parseGoDuration('1.5h'), 5400e9);
  t.is(parseGoDuration('250ms'), 250e6);
  t.is(parseGoDuration('0'), 0);
  t.is(parseGoDuration('30'), undefined);
  t.is(parseGoDuration('soon'), undefined);
  t.is(goDuration(0), '0s');
  t.is(goDuration(30e9), '30s');
  t.is(goDuration(90e9), '1m30s');
  t.is(goDuration(3600e9), '1h0m0s');
  t.is(goDuration(1.5e9), '1.5s');
  t.is(goDuration(250e6), '250ms');
  t.is(goDuration(1500), '1.5µs');
});

test('a step\'s cache input leaves out where it was written and the proxy settings', (t) => {
  const run: RunStep = {
    kind: 'run', argv: ['/bin/sh', '-c', 'true'], env: ['PATH=/bin'], proxyEnv: ['HTTP_PROXY=http://p:3128'], user: '', workdir: '/',
    mounts: [], network: 'default', inlineFiles: [], location: { file: 'Containerfile', line: 3 }, createdBy: 'RUN /bin/sh -c true # buildkit',
    emptyLayer: false, cacheText: 'RUN ["/bin/sh","-c","true"]',
  };
  const moved = { ...run, location: { file: 'Other', line: 9 }, proxyEnv: [] };
  t.is(stepCacheInput(run), stepCacheInput(moved));
  t.not(stepCacheInput(run), stepCacheInput({ ...run, env: ['PATH=/usr/bin'] }));
  t.false(stepCacheInput(run).includes('HTTP_PROXY'));
  t.is(canonicalJson({ b: 1, a: { d: [2, { f: 1, e: 0 }], c: 3 } }), '{"a":{"c":3,"d":[2,{"e":0,"f":1}]},"b":1}');
});
