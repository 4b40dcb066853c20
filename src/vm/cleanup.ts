// Every QEMU process and temp dir a VM owns is registered here, so that whatever ends dockvm (success,
// an error, SIGINT/SIGTERM/SIGHUP, process.exit) kills and reaps QEMU and removes the temps.
import { rmSync } from 'node:fs';

export interface VmResources {
  /** QEMU's pid while it may still run */
  pid(): number | undefined;
  readonly tempDir: string;
}

const live = new Set<VmResources>();
const SIGNALS: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
let installed = false;

function killAllNow(): void {
  for (const vm of live) {
    const pid = vm.pid();
    if (pid !== undefined) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    rmSync(vm.tempDir, { recursive: true, force: true });
  }
  live.clear();
}

function onSignal(signal: NodeJS.Signals): void {
  killAllNow();
  uninstall();
  // re-raise: with our handler gone, the default action (or the embedder's own handler) applies
  process.kill(process.pid, signal);
}

function install(): void {
  if (installed) return;
  installed = true;
  for (const signal of SIGNALS) process.on(signal, onSignal);
  process.on('exit', killAllNow);
}

function uninstall(): void {
  if (!installed) return;
  installed = false;
  for (const signal of SIGNALS) process.off(signal, onSignal);
  process.off('exit', killAllNow);
}

export function track(vm: VmResources): void {
  live.add(vm);
  install();
}

export function untrack(vm: VmResources): void {
  live.delete(vm);
  if (live.size === 0) uninstall();
}
