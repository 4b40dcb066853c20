// Tests that need something this host may lack (a peer tool, root, mounting a tmpfs). Without it the test
// is skipped, visibly, with the reason in its title; under CI=true, where every prerequisite is meant to
// be installed, it fails instead, saying what is missing. Paths that depend on what the host is rather
// than on what was installed (with /dev/kvm, without) are onlyWhere(): one of them runs on any host.
import test, { type Implementation } from 'ava';

/** test, test.serial: anything that declares a test and has .skip */
interface Declare {
  (title: string, implementation: Implementation<[]>): void;
  skip(title: string, implementation: Implementation<[]>): void;
}

/**
 * `declare` when `present`; else a skip titled with `reason`, or under CI=true a failing test.
 * `needs(hasTool('skopeo'), 'skopeo is not installed (scripts/setup installs it)')('title', async (t) => …)`
 */
export function needs(present: boolean, reason: string, declare: Declare = test): (title: string, implementation: Implementation<[]>) => void {
  return (title, implementation) => {
    if (present) declare(title, implementation);
    else if (process.env.CI === 'true') declare(title, (t) => t.fail(`a prerequisite is missing, and CI=true: ${reason}`));
    else declare.skip(`${title} (skipped: ${reason})`, implementation);
  };
}

/**
 * `declare` where `applies`; elsewhere a skip titled with `reason`, also under CI=true: for one of
 * several paths a host takes (a host with /dev/kvm probes it, one without does not), each its own test.
 */
export function onlyWhere(applies: boolean, reason: string, declare: Declare = test): (title: string, implementation: Implementation<[]>) => void {
  return (title, implementation) => {
    if (applies) declare(title, implementation);
    else declare.skip(`${title} (skipped: ${reason})`, implementation);
  };
}
