// Asked for, the guest has a user-mode network and a resolv.conf (vm.test.ts checks that it has none
// otherwise): by default through passt, with the host's loopback out of reach (test/security/network.test.ts);
// with DOCKVM_HOST_LOOPBACK=1 QEMU's own, reaching the host's loopback at 10.0.2.2. And the vsock transport, where /dev/vhost-vsock is.
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import test from 'ava';
import { type Vm, startVm, vsockUsable } from '../../src/vm/vm.js';

async function run(vm: Vm, script: string): Promise<{ exitCode: number | null; stdout: string }> {
  let stdout = '';
  const status = await vm.exec({ argv: ['sh', '-c', script], onStdout: (c) => void (stdout += c.toString()), onStderr: (c) => void (stdout += c.toString()) });
  return { exitCode: status.exitCode, stdout };
}

test('with network and DOCKVM_HOST_LOOPBACK=1: eth0 is up at 10.0.2.15, DNS points at QEMU, and the host\'s loopback is reachable at 10.0.2.2', async (t) => {
  const server = createServer((_req, res) => res.end('hello from the host\n'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => void server.close());
  const port = (server.address() as AddressInfo).port;

  const vm = await startVm({ network: true, memoryMiB: 256, env: { ...process.env, DOCKVM_HOST_LOOPBACK: '1' } });
  t.teardown(() => vm.kill());
  const r = await run(vm, `ip -4 -o addr show dev eth0 | awk '{print $4}'; cat /etc/resolv.conf; wget -q -O - http://10.0.2.2:${port}/`);
  t.is(r.exitCode, 0, r.stdout);
  t.deepEqual(r.stdout.split('\n'), ['10.0.2.15/24', 'nameserver 10.0.2.3', 'hello from the host', '']);
  await vm.shutdown();
});

const vsock = vsockUsable();
(vsock ? test : test.skip)(`the agent over virtio-vsock${vsock ? '' : ' (skipped: no usable /dev/vhost-vsock on this host)'}`, async (t) => {
  const vm = await startVm({ transport: 'vsock', memoryMiB: 256 });
  t.teardown(() => vm.kill());
  t.is(vm.hello?.transport, 'vsock');
  t.deepEqual(await run(vm, 'echo over vsock; exit 3'), { exitCode: 3, stdout: 'over vsock\n' });
  await vm.shutdown();
});
