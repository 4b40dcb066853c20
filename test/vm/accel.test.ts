// The KVM verdict is cached under a key of everything it depends on: a change to any of it probes again.
// No VM boots here: the key is a function, and chooseAccel's probe boots through the function it is given.
import { readFileSync, existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { release, tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { type AccelProbeInputs, type HostFacts, accelCacheKey, chooseAccel, hostFacts, kvmDevicePresent } from '../../src/vm/accel.js';
import { ARCHITECTURES, defaultArchitecture, isNative } from '../../src/vm/architectures.js';
import { hostArchitecture } from '../../src/image/platform.js';

const host: HostFacts = {
  kernel: 'x64 6.1.0-57-cloud-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1',
  cpu: 'vendor_id=GenuineIntel; cpu family=6; model=167; model name=Intel(R) Xeon(R) Processor; stepping=1; microcode=0x1; flags=vmx',
  kvm: 'kvm, kvm_intel',
};
const inputs: AccelProbeInputs = {
  qemu: { path: 'qemu-system-x86_64', version: '7.2.22' },
  image: { path: '/cache/kernel/pvh/aaaa.vmlinux', protocol: 'pvh', kernelDigest: 'a'.repeat(64) },
  initramfsHash: 'b'.repeat(64),
  machine: 'microvm',
  transport: 'serial',
};

/** One change to each thing the verdict depends on. */
const changes: Record<string, [AccelProbeInputs, HostFacts]> = {
  'host kernel release': [inputs, { ...host, kernel: 'x64 6.12.0-1-cloud-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.12.1-1' }],
  'host kernel build': [inputs, { ...host, kernel: 'x64 6.1.0-57-cloud-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.159-1' }],
  'CPU model': [inputs, { ...host, cpu: host.cpu.replace('model=167', 'model=143') }],
  'CPU virtualisation flags': [inputs, { ...host, cpu: host.cpu.replace('flags=vmx', 'flags=hypervisor') }],
  'KVM module': [inputs, { ...host, kvm: 'kvm, kvm_pvm' }],
  'QEMU version': [{ ...inputs, qemu: { ...inputs.qemu, version: '8.2.1' } }, host],
  'QEMU binary': [{ ...inputs, qemu: { ...inputs.qemu, path: '/opt/qemu/bin/qemu-system-x86_64' } }, host],
  'machine type': [{ ...inputs, machine: 'pc' }, host],
  'agent transport': [{ ...inputs, transport: 'vsock' }, host],
  'guest kernel content': [{ ...inputs, image: { ...inputs.image, kernelDigest: 'c'.repeat(64) } }, host],
  'guest kernel entry': [{ ...inputs, image: { ...inputs.image, protocol: 'bzImage' } }, host],
  initramfs: [{ ...inputs, initramfsHash: 'd'.repeat(64) }, host],
};

test('the KVM verdict key changes with each thing the verdict depends on, not with where the kernel file is', (t) => {
  const key = accelCacheKey(inputs, host);
  t.is(accelCacheKey({ ...inputs }, { ...host }), key, 'same inputs, same key');
  // the same kernel booted from elsewhere is the same kernel
  t.is(accelCacheKey({ ...inputs, image: { ...inputs.image, path: '/elsewhere/vmlinux' } }, host), key);
  for (const [what, [changedInputs, changedHost]] of Object.entries(changes)) {
    t.not(accelCacheKey(changedInputs, changedHost), key, `a new ${what} gives a new key`);
  }
});

test("hostFacts describes this host: its kernel release, its CPU, the kvm modules loaded", (t) => {
  const facts = hostFacts();
  t.true(facts.kernel.includes(release()));
  const model = /^model name\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim();
  if (model !== undefined) t.true(facts.cpu.includes(`model name=${model}`), facts.cpu);
  for (const module of ['kvm_intel', 'kvm_amd', 'kvm_pvm']) {
    t.is(facts.kvm.includes(module), existsSync(`/sys/module/${module}`), `${module} in "${facts.kvm}"`);
  }
  t.deepEqual(hostFacts(), facts, 'stable from one call to the next');
});

const kvm = kvmDevicePresent();
(kvm ? test : test.skip)(
  `chooseAccel probes again when an input changes, and answers from the cache when none did (the probe's boot function injected)${kvm ? '' : ' (skipped: chooseAccel probes only when /dev/kvm is usable, and it is not here)'}`,
  async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'dockvm-accel-key-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    let boots = 0;
    const probe = (probeInputs: AccelProbeInputs, probeHost: HostFacts) =>
      chooseAccel({
        ...probeInputs,
        architecture: defaultArchitecture(),
        host: probeHost,
        env: { ...process.env, DOCKVM_ACCEL: undefined },
        cacheFile: join(dir, 'accel.json'),
        boot: async (plan) => {
          t.is(plan.accel, 'kvm');
          boots++;
          return { shutdown: async () => {} }; // the probe's criterion met: the agent was reached
        },
      });
    t.deepEqual(await probe(inputs, host), { accel: 'kvm', reason: 'probe' });
    t.deepEqual(await probe(inputs, host), { accel: 'kvm', reason: 'cached probe' });
    t.is(boots, 1);
    for (const [what, [changedInputs, changedHost]] of Object.entries(changes)) {
      const before = boots;
      t.deepEqual(await probe(changedInputs, changedHost), { accel: 'kvm', reason: 'probe' }, what);
      t.is(boots, before + 1, `a new ${what} boots a new probe`);
    }
    t.deepEqual(await probe(inputs, host), { accel: 'kvm', reason: 'cached probe' }, 'the first verdict is still there');
  },
);

test('a guest of another architecture than the host\'s is TCG at once: no probe, whatever DOCKVM_ACCEL says', async (t) => {
  const foreign = Object.values(ARCHITECTURES).find((row) => !isNative(row))!;
  for (const forced of [undefined, 'kvm']) {
    const choice = await chooseAccel({
      ...inputs,
      architecture: foreign,
      env: { ...process.env, DOCKVM_ACCEL: forced },
      boot: async () => {
        t.fail('no probe boots for a foreign guest');
        return { shutdown: async () => {} };
      },
    });
    t.deepEqual(choice, { accel: 'tcg', reason: `${foreign.architecture} guest on this ${hostArchitecture()} host` });
  }
});
