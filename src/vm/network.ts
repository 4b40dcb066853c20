// The build VM's network, when a build asks for one. QEMU's own user networking (libslirp) forwards the
// gateway address 10.0.2.2 to the host's 127.0.0.1, so a script from the internet could reach every
// service a CI machine keeps on its loopback (a registry, a metadata proxy, a database): QEMU 7.2 has no
// option to close that (libslirp's disable_host_loopback is not exposed). passt is the same kind of
// unprivileged user-mode network, and `--no-map-gw` closes exactly that door. So by default the guest's
// NIC is a `-netdev stream` to a passt process of its own; DOCKVM_HOST_LOOPBACK=1 opens the door again
// (QEMU's user networking, as before), for a build that must reach a service on the host's loopback.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { MissingToolError, VmError } from '../errors.js';

/** What a build with network says when passt is not installed (and `dockvm doctor` too). */
export const PASST_MISSING =
  'the build VM\'s network needs passt, which keeps the host\'s loopback out of its reach: install passt (apt-get install passt), or set DOCKVM_HOST_LOOPBACK=1 to use QEMU\'s user networking, which lets the build reach services on 127.0.0.1';

/** How the guest's NIC reaches out: passt (the host's loopback closed) or QEMU's user networking (open). */
export type NetworkBackend = 'passt' | 'slirp';

/** DOCKVM_HOST_LOOPBACK=1: 10.0.2.2 is the host's loopback again (QEMU's user networking). */
export function networkBackend(env: NodeJS.ProcessEnv = process.env): NetworkBackend {
  const value = env.DOCKVM_HOST_LOOPBACK;
  if (value === undefined || value === '' || value === '0') return 'passt';
  if (value === '1') return 'slirp';
  throw new VmError(`DOCKVM_HOST_LOOPBACK=${value} is not 0 or 1`);
}

/**
 * passt's arguments; each says why. The guest side matches what vm/init configures for QEMU's user
 * networking (10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3), so the guest cannot tell the two apart.
 */
export function passtArgs(socketPath: string, uid: number, gid: number): string[] {
  return [
    '--foreground', // our child: its exit is an event we see, and we kill it
    '--stderr', // its errors into the VM's error message, not the system log
    '--quiet', // ...and only its errors
    '--one-off', // quit when QEMU, its one client, goes away
    // as root, passt would drop to nobody, who cannot reach the socket in our 0700 temp dir; it still
    // isolates itself (namespaces, seccomp) as whoever it runs as
    '--runas', `${uid}:${gid}`,
    '--socket', socketPath,
    '--ipv4-only', // the guest configures IPv4 only; no IPv6 path to the host's ::1 either
    '--address', '10.0.2.15', '--netmask', '24', '--gateway', '10.0.2.2',
    // DNS asked of 10.0.2.3 goes to the host's first resolver (its /etc/resolv.conf). Not `--dns 10.0.2.3`:
    // that names the resolver passt forwards to, and every lookup went round in a circle and timed out
    '--dns-forward', '10.0.2.3',
    '--no-map-gw', // THE point: the gateway address is not the host's loopback
    '--tcp-ports', 'none', '--udp-ports', 'none', // nothing on the host forwards into the guest
  ];
}

const SOCKET_WAIT_MS = 5000;

/** Start passt for one VM; resolves once its socket is there for QEMU to connect to. */
export async function startPasst(tempDir: string, onStderr: (chunk: Buffer) => void): Promise<{ process: ChildProcess; socketPath: string }> {
  const socketPath = join(tempDir, 'net.sock');
  const passt = spawn('passt', passtArgs(socketPath, process.getuid?.() ?? 0, process.getgid?.() ?? 0), { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  passt.stderr!.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-2048);
    onStderr(chunk);
  });
  const failed = new Promise<never>((_, reject) => {
    passt.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        err.code === 'ENOENT'
          ? new MissingToolError(PASST_MISSING, { cause: err, command: 'passt' })
          : new VmError(`cannot start passt for the VM's network: ${err.message}`, { cause: err, command: 'passt' }),
      ),
    );
    passt.once('exit', (code, signal) => reject(new VmError(`passt (the VM's network) stopped before QEMU could connect: ${signal ?? `exit code ${code}`}${stderr.trim() ? `: ${stderr.trim().split('\n').slice(-2).join(' | ')}` : ''}`, { command: 'passt' })));
  });
  failed.catch(() => {});
  const deadline = Date.now() + SOCKET_WAIT_MS;
  try {
    while (!existsSync(socketPath)) {
      if (Date.now() > deadline) throw new VmError(`passt (the VM's network) did not open ${socketPath} within ${SOCKET_WAIT_MS} ms`, { command: 'passt' });
      await Promise.race([failed, new Promise((resolve) => setTimeout(resolve, 10))]);
    }
  } catch (err) {
    passt.kill('SIGKILL');
    throw err;
  }
  return { process: passt, socketPath };
}
