// Counting real QEMU starts. A test that promises "no VM boots" (no runAsRoot, an up-to-date refresh, a
// cache hit) or "a restore, not a boot" counts what QEMU did instead of trusting what dockvm says about
// itself: DOCKVM_QEMU names a wrapper script that records each start (its argv) in a directory of its
// own, then execs the real qemu-system-x86_64 (so QEMU keeps the wrapper's pid, and killing it works).
//
//   const qemu = await qemuCounter(t);                   // per test: pass qemu.env to dockvm children
//   await runDockvm([...], { env: { ...other, ...qemu.env } });
//   t.is(qemu.vms(), 0);                                 // no VM ran, booted or restored
//
//   const qemu = await countQemuInProcess();             // library calls in this process (and the
//                                                        // dockvm children it starts): one per file
//
// Counts are deterministic: the counted environment pins DOCKVM_ACCEL to the verdict this host already
// has (the KVM probe, itself a QEMU start, ran before counting began, outside the counter).
import { accessSync, constants, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { doctor } from '../../src/vm/doctor.js';
import { findQemu, resolveKernel } from '../../src/vm/index.js';

export interface QemuStart {
  /** QEMU's pid (the wrapper became QEMU) */
  readonly pid: number;
  /** its arguments, without the program name */
  readonly argv: readonly string[];
}

export interface QemuCounter {
  /** DOCKVM_QEMU (the wrapper) and DOCKVM_ACCEL (this host's verdict), for dockvm child processes */
  readonly env: Readonly<Record<string, string>>;
  /** every start so far, in order; `--version` probes included */
  starts(): QemuStart[];
  /** VM boots so far: starts that boot a kernel (-kernel) and restore no snapshot (-incoming) */
  boots(): number;
  /** of those boots, the ones saved as a snapshot: RAM in a shared memory file (src/vm/qemu.ts) */
  saves(): number;
  /** snapshot restores so far: starts with -incoming */
  restores(): number;
  /** VMs that ran work so far, booted or restored: a boot only to save a snapshot is not one */
  vms(): number;
}

/** A counter of its own for one test; its wrapper is removed when the test ends. */
export async function qemuCounter(t: ExecutionContext): Promise<QemuCounter> {
  const counter = makeCounter(await hostAccel());
  t.teardown(counter.remove);
  return counter;
}

let inProcess: Promise<QemuCounter> | undefined;

/**
 * Count this process's QEMU starts (library calls such as refresh() and startVm()), and those of the
 * dockvm children it starts, which inherit process.env. Call it before anything in this process boots
 * (a test.before hook): findQemu() keeps the first binary it found for the process, and a counter
 * installed after that would count nothing. It checks that, and throws.
 */
export function countQemuInProcess(): Promise<QemuCounter> {
  inProcess ??= (async () => {
    const counter = makeCounter(await hostAccel());
    process.on('exit', counter.remove);
    Object.assign(process.env, counter.env);
    const found = await findQemu();
    if (found.path !== counter.env.DOCKVM_QEMU) {
      throw new Error(`countQemuInProcess: this process already runs ${found.path}; call it before anything boots a VM`);
    }
    return counter;
  })();
  return inProcess;
}

let accel: Promise<string> | undefined;

/**
 * DOCKVM_ACCEL when set; else what doctor() settles on (the cached KVM probe verdict, probing once
 * when there is none), with the real QEMU and a copy of the environment (findQemu caches nothing then).
 */
function hostAccel(): Promise<string> {
  accel ??= (async () => {
    if (process.env.DOCKVM_ACCEL) return process.env.DOCKVM_ACCEL;
    const env = { ...process.env };
    await resolveKernel({ env }); // fetched when missing, as a boot would (doctor only looks)
    const report = await doctor({ env, onNotice: () => {} });
    if (report.accel === null) throw new Error(`cannot count VM boots: no VM can boot here (${report.missing.join('; ')})`);
    return report.accel;
  })();
  return accel;
}

function makeCounter(accelVerdict: string): QemuCounter & { remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'dockvm-qemu-counter-'));
  const startsDir = join(dir, 'starts');
  mkdirSync(startsDir);
  const wrapper = join(dir, 'qemu-system-x86_64');
  // One file per start, written by one printf before the exec: concurrent starts cannot interleave, and
  // the name (nanoseconds, then the pid) orders them. A start that cannot be recorded does not run.
  writeFileSync(
    wrapper,
    [
      '#!/bin/sh',
      '# dockvm test helper (test/helpers/qemu-counter.ts): record this QEMU start, then become the real QEMU',
      `record=${quote(startsDir)}/$(date +%s%N).$$ || exit 125`,
      'printf \'%s\\0\' "$@" > "$record" || exit 125',
      `exec ${quote(realQemu())} "$@"`,
      '',
    ].join('\n'),
    { mode: 0o755 },
  );
  const starts = (): QemuStart[] =>
    readdirSync(startsDir)
      .sort((a, b) => Number(BigInt(a.split('.')[0]!) - BigInt(b.split('.')[0]!)))
      .map((name) => ({ pid: Number(name.split('.')[1]), argv: readFileSync(join(startsDir, name), 'utf8').split('\0').slice(0, -1) }));
  const boots = () => starts().filter(({ argv }) => argv.includes('-kernel') && !argv.includes('-incoming'));
  const saves = () => boots().filter(({ argv }) => argv.some((arg) => arg.startsWith('memory-backend-file,') && arg.includes(',share=on')));
  const restores = () => starts().filter(({ argv }) => argv.includes('-incoming'));
  return {
    env: { DOCKVM_QEMU: wrapper, DOCKVM_ACCEL: accelVerdict },
    starts,
    boots: () => boots().length,
    saves: () => saves().length,
    restores: () => restores().length,
    vms: () => boots().length - saves().length + restores().length,
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** The QEMU dockvm would run without the counter: DOCKVM_QEMU, else qemu-system-x86_64 on PATH. */
function realQemu(): string {
  const named = process.env.DOCKVM_QEMU || 'qemu-system-x86_64';
  if (named.includes('/')) return named;
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    try {
      accessSync(join(dir, named), constants.X_OK);
      return join(dir, named);
    } catch {
      // not here
    }
  }
  return named; // not found: QEMU's start fails as it would without the counter
}

function quote(text: string): string {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}
