// Used by lifecycle.test.ts: boot a VM and wait forever, to be killed by a signal while booting (the
// test gives the guest an init that never reaches the agent; the boot deadline is not what ends it).
import { startVm } from '../../src/vm/vm.js';

const vm = await startVm({ accel: 'tcg', timeoutMs: 10 * 60_000 });
process.stdout.write(`booted ${vm.pid}\n`);
await new Promise(() => {});
