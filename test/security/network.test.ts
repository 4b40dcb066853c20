// Issue 13, the network: a RUN step has the network by default, and a script from the internet must not
// reach what a CI machine keeps on its loopback (QEMU's user networking maps 10.0.2.2 to 127.0.0.1;
// dockvm's default network, passt with --no-map-gw, does not). One build, one boot: the probe tries the
// host's loopback service through every address that could lead there, and, as the control that the
// network works at all, a service on the host's own non-loopback address.
import test from 'ava';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { lookup } from 'node:dns/promises';
import { networkInterfaces } from 'node:os';
import { runDockvm } from '../helpers/peers.js';
import { qemuCounter } from '../helpers/qemu-counter.js';
import { BASE, alive, baseContext, buildDir, layers, tempRoot, text } from './helpers.js';

async function serve(host: string, body: string): Promise<{ server: Server; port: number }> {
  const server = createServer((_request, response) => response.end(`${body}\n`));
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  return { server, port: (server.address() as AddressInfo).port };
}

/** The host's first non-loopback IPv4 address, where a service reachable "from the network" listens. */
const hostAddress = Object.values(networkInterfaces()).flat().find((a) => a && a.family === 'IPv4' && !a.internal)?.address;

// Each target: reached (and what it said) or closed; a connection that hangs counts as closed after 10 s.
const probe = `#!/bin/bash
for target in "$@"; do
  if out=$(timeout 10 bash -c 'exec 3<>/dev/tcp/\${0%:*}/\${0##*:} && printf "GET / HTTP/1.0\\r\\n\\r\\n" >&3 && tail -n 1 <&3' "$target" 2>/dev/null); then
    echo "$target reached: $out"
  else
    echo "$target closed"
  fi
done
`;

/** A name this host's resolver answers (what apt needs of the guest's DNS), or undefined when it answers none. */
const NAME = 'deb.debian.org';
const resolvable = await lookup(NAME, { family: 4 }).then(() => true, () => false);

(hostAddress ? test : test.skip)(`a RUN step with the network reaches the host's address${resolvable ? ` and resolves ${NAME} through the host's resolver,` : ''} but not a service on its 127.0.0.1${hostAddress ? '' : ' (skipped: this host has no non-loopback IPv4 address for the control)'}`, async (t) => {
  const loopback = await serve('127.0.0.1', 'loopback service');
  const open = await serve(hostAddress!, 'network service');
  t.teardown(() => void (loopback.server.close(), open.server.close()));
  const targets = [`10.0.2.2:${loopback.port}`, `10.0.2.3:${loopback.port}`, `127.0.0.1:${loopback.port}`, `${hostAddress}:${open.port}`];
  const { ctx, out } = buildDir(t, `FROM ${BASE}\nCOPY probe.sh /probe.sh\nRUN ls /sys/class/net > /devices.txt && bash /probe.sh ${targets.join(' ')} > /reach.txt${resolvable ? ` && (timeout 20 getent ahostsv4 ${NAME} >/dev/null && echo resolved || echo unresolved) > /dns.txt` : ''}\n`, { 'probe.sh': probe });
  const qemu = await qemuCounter(t);
  const temp = tempRoot(t);
  const run = await runDockvm(['build', '--build-context', baseContext(), '-t', 'localhost/dockvm-test/net:1', '-o', out, ctx], { env: { ...qemu.env, ...temp.env } });
  t.is(run.exitCode, 0, run.stderr);
  const top = (await layers(out)).at(-1);
  t.is(text(top, 'devices.txt'), 'eth0\nlo\n', 'the step has its network device');
  t.deepEqual(text(top, 'reach.txt')?.split('\n'), [
    `10.0.2.2:${loopback.port} closed`, // QEMU's user networking: "loopback service"
    `10.0.2.3:${loopback.port} closed`, // the DNS forwarder's address forwards DNS only
    `127.0.0.1:${loopback.port} closed`, // the guest's own loopback
    `${hostAddress}:${open.port} reached: network service`, // the network itself works
    '',
  ]);
  // names are looked up through passt's forwarder at 10.0.2.3 (a loop once, when passt was told 10.0.2.3 was the resolver)
  if (resolvable) t.is(text(top, 'dns.txt'), 'resolved\n', `the guest resolves ${NAME}, as this host does`);
  t.is(qemu.vms(), 1);
  const boot = qemu.starts().find(({ argv }) => argv.includes('-kernel'))!.argv;
  t.is(boot[boot.indexOf('-sandbox') + 1], 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny', 'the VM booted under QEMU\'s seccomp sandbox');
  t.regex(boot[boot.indexOf('-netdev') + 1]!, /^stream,id=net0,server=off,addr\.type=unix,addr\.path=\S+\/net\.sock$/, 'its NIC is passt\'s');
  t.false(qemu.starts().some(({ pid }) => alive(pid)), 'no QEMU left');
  t.deepEqual(await temp.processes(), [], 'no QEMU or passt of this build left');
  t.deepEqual(temp.left(), [], 'no temp dir left');
});
