// The guest's step markers (vm/run-in-image.c): dockvm-pids-max=N when it stopped a fork bomb,
// dockvm-oom-kills=N when the OOM killer struck. They are written once every process of the step is gone,
// but a process killed mid-write may have left a partial line before them, as a CI run saw.
import test from 'ava';
import { oomKilled, processLimitHit, withoutOomMarker } from '../../src/build/vm-layer.js';

const killedMidLine = '/bin/sh: 1: Cannot fork\n/bin/sh: 1: dockvm-pids-max=486\n';

test('the process-limit marker is found after a partial line a killed process left', (t) => {
  t.regex(processLimitHit(killedMidLine) ?? '', /^hit the build VM's limit of 486 processes \(a fork bomb\?\)/);
  t.regex(processLimitHit('dockvm-pids-max=40\n') ?? '', /limit of 40 processes/);
  t.is(processLimitHit('/bin/sh: 1: Cannot fork\n'), undefined);
  t.is(processLimitHit('dockvm-pids-max=40 and more\n'), undefined, 'only at the end of a line');
});

test('the OOM marker likewise, and it is left out of the stderr tail an error shows', (t) => {
  t.true(oomKilled('partial outpdockvm-oom-kills=1\n'));
  t.true(oomKilled('dockvm-oom-kills=3\n'));
  t.false(oomKilled('Killed\n'));
  t.is(withoutOomMarker('make: *** [all] Killed\npartial outpdockvm-oom-kills=1\n'), 'make: *** [all] Killed\npartial outp');
});
