// Used by lifecycle.test.ts: boot a VM and wait forever, to be killed by a signal while booting.
import { startVm } from '../../src/vm/vm.js';

const vm = await startVm({ accel: 'tcg' });
process.stdout.write(`booted ${vm.pid}\n`);
await new Promise(() => {});
