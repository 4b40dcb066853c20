// Counting real QEMU starts. A test that promises "no VM boots" (no runAsRoot, an up-to-date refresh, a
// cache hit) or "a restore, not a boot" counts what QEMU did instead of trusting what dockvm says about
// itself: DOCKVM_QEMU (and DOCKVM_QEMU_ARM64…, one per architecture: src/vm/architectures.ts) names a
// wrapper script that records each start (its argv) in a directory of its own, then execs the real
// qemu-system-x86_64 (qemu-system-aarch64…), so QEMU keeps the wrapper's pid, and killing it works.
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
import { ARCHITECTURES, archEnv, defaultArchitecture, type ArchitectureRow } from '../../src/vm/architectures.js';

export interface QemuStart {
  /** QEMU's pid (the wrapper became QEMU) */
  readonly pid: number;
  /** its arguments, without the program name */
  readonly argv: readonly string[];
}

export interface QemuCounter {
  /** DOCKVM_QEMU, DOCKVM_QEMU_ARM64… (the wrappers) and DOCKVM_ACCEL (this host's verdict), for dockvm child processes */
  readonly env: Readonly<Record<string, string>>;
  /** every start so far, in order; `--version` probes included */
  starts(): QemuStart[];
  /** VM boots so far: starts that boot a kernel (-kernel) and restore no snapshot (-incoming) */
  boots(): number;
  /** of those boots, the ones saved as a snapshot: RAM in a shared memory file (src/vm/qemu.ts) */
  saves(): number;
  /** the boots of one architecture's QEMU */
  bootsOf(architecture: string): number;
  /** snapshot restores so far: starts with -incoming */
  restores(): number;
  /** VMs that ran work so far, booted or restored: a boot only to save a snapshot is not one */
  vms(): number;
  /** the VMs that ran work of one architecture's QEMU */
  vmsOf(architecture: string): number;
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
    const row = defaultArchitecture();
    const found = await findQemu(row);
    if (found.path !== counter.env[archEnv(row, 'DOCKVM_QEMU')]) {
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
    await resolveKernel({ env, architecture: defaultArchitecture() }); // fetched when missing, as a boot would (doctor only looks)
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
  const env: Record<string, string> = { DOCKVM_ACCEL: accelVerdict };
  for (const row of Object.values(ARCHITECTURES)) {
    const wrapper = join(dir, row.qemu.binary);
    // One file per start, written by one printf before the exec: concurrent starts cannot interleave, and
    // the name (nanoseconds, then the pid, then the architecture) orders them. A start that cannot be
    // recorded does not run.
    writeFileSync(
      wrapper,
      [
        '#!/bin/sh',
        '# dockvm test helper (test/helpers/qemu-counter.ts): record this QEMU start, then become the real QEMU',
        `record=${quote(startsDir)}/$(date +%s%N).$$.${row.architecture} || exit 125`,
        'printf \'%s\\0\' "$@" > "$record" || exit 125',
        `exec ${quote(realQemu(row))} "$@"`,
        '',
      ].join('\n'),
      { mode: 0o755 },
    );
    env[archEnv(row, 'DOCKVM_QEMU')] = wrapper;
  }
  const starts = (): (QemuStart & { architecture: string })[] =>
    readdirSync(startsDir)
      .sort((a, b) => Number(BigInt(a.split('.')[0]!) - BigInt(b.split('.')[0]!)))
      .map((name) => ({ pid: Number(name.split('.')[1]), architecture: name.split('.')[2]!, argv: readFileSync(join(startsDir, name), 'utf8').split('\0').slice(0, -1) }));
  const isBoot = ({ argv }: QemuStart) => argv.includes('-kernel') && !argv.includes('-incoming');
  const boots = () => starts().filter(isBoot);
  const isSave = ({ argv }: QemuStart) => argv.some((arg) => arg.startsWith('memory-backend-file,') && arg.includes(',share=on'));
  const saves = () => boots().filter(isSave);
  const restores = () => starts().filter(({ argv }) => argv.includes('-incoming'));
  const ranWork = () => [...boots().filter((start) => !isSave(start)), ...restores()];
  return {
    env,
    starts,
    boots: () => boots().length,
    bootsOf: (architecture) => boots().filter((start) => start.architecture === architecture).length,
    saves: () => saves().length,
    restores: () => restores().length,
    vms: () => ranWork().length,
    vmsOf: (architecture) => ranWork().filter((start) => start.architecture === architecture).length,
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** The QEMU dockvm would run without the counter: DOCKVM_QEMU (…_ARM64), else qemu-system-x86_64 (…) on PATH. */
function realQemu(row: ArchitectureRow): string {
  const named = process.env[archEnv(row, 'DOCKVM_QEMU')] || row.qemu.binary;
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
