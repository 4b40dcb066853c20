// dockvm doctor [--json]: what the host has for build VMs, and what to install when something is missing.
import type { Command } from 'commander';
import { DockvmError } from '../errors.js';
import type { DoctorReport } from '../vm/doctor.js';
import { printJson } from './io.js';

export function registerDoctor(program: Command): void {
  program
    .command('doctor')
    .description(
      "Check the host for build VMs of its own architecture: QEMU and its version, the guest kernel and its " +
        'modules, the initramfs (built into the cache if missing), whether KVM works (a real short boot, cached ' +
        'per host) or TCG is used, the agent transport (vsock or virtio-serial), passt for builds with network, and the cache; then, for every ' +
        'architecture dockvm has a build VM for (amd64, arm64), whether this host can build for it and what to ' +
        'install if not. Exits 1 when a VM of the host\'s architecture cannot boot.',
    )
    .option('--json', 'print one JSON document describing the result')
    .action(async (options: { json?: boolean }) => {
      const { doctor } = await import('../vm/doctor.js'); // loaded on use: faster start-up
      const report = await doctor();
      if (options.json) printJson(report);
      else process.stdout.write(formatReport(report));
      if (!report.ok) throw new DockvmError(`${report.missing.length} problem(s) found; see above`);
    });
}

function bytes(n: number): string {
  return n >= 1024 * 1024 ? `${(n / 1024 / 1024).toFixed(1)} MiB` : `${(n / 1024).toFixed(0)} KiB`;
}

export function formatReport(r: DoctorReport): string {
  const lines = [
    `qemu:      ${r.qemu ? `${r.qemu.path} ${r.qemu.version}` : 'missing'}`,
    `kernel:    ${r.kernel ? `${r.kernel.release} (${r.kernel.source}) ${r.kernel.path}` : 'missing'}`,
  ];
  if (r.kernel) {
    lines.push(`modules:   ${r.kernel.modules.length ? r.kernel.modules.join(' ') : 'none'} (from ${r.kernel.modulesDir ?? 'nowhere'})`);
    lines.push(`built in:  ${r.kernel.builtin.join(' ') || 'none of the wanted drivers'}`);
    const how = { pvh: 'uncompressed, PVH entry', bzImage: 'bzImage', Image: 'arm64 Image' }[r.kernel.boot.protocol];
    lines.push(`boots:     ${r.kernel.boot.path} (${how})`);
  }
  lines.push(`initramfs: ${r.initramfs ? `${r.initramfs.path} (${r.initramfs.state})` : 'not available'}`);
  lines.push(`/dev/kvm:  ${r.kvm.device ? 'present' : 'absent'}; KVM ${r.kvm.usable === null ? 'not probed' : r.kvm.usable ? 'works' : 'does not work here'}`);
  lines.push(`accel:     ${r.accel ?? 'none'}${r.accelReason ? ` (${r.accelReason})` : ''}`);
  lines.push(`transport: ${r.transport}${r.transport === 'serial' ? ' (virtio-serial; no usable /dev/vhost-vsock)' : ' (virtio-vsock)'}`);
  const net = r.network;
  lines.push(
    `network:   ${
      net.problem ??
      (net.backend === 'passt' ? `passt ${net.passt} (the host's loopback closed to builds)` : `QEMU user networking (DOCKVM_HOST_LOOPBACK=1: builds reach the host's loopback)${net.passt ? `; passt ${net.passt}` : ''}`)
    }`,
  );
  lines.push(`cache:     ${r.cache.dir} (${bytes(r.cache.bytes)})`);
  for (const m of r.missing) lines.push(`problem:   ${m}`);
  for (const a of r.architectures) {
    const state = a.ready
      ? `can build (${a.accel}, ${a.qemu!.path} ${a.qemu!.version}; kernel ${a.kernel ?? 'fetched on first use'})`
      : `cannot build: ${a.missing.join('; ')}`;
    lines.push(`${`${a.platform}:`.padEnd(16)} ${state}`);
  }
  if (r.ok) lines.push(`ok: build VMs can boot on this host (${r.architectures.filter((a) => a.ready).map((a) => a.platform).join(', ')})`);
  return `${lines.join('\n')}\n`;
}
