// What an ELF header says about a program, read from its first bytes: which CPU it is for, and the
// program interpreter a dynamically linked one names (PT_INTERP). Enough to tell, without running
// anything, whether a guest tool suits the guest (architectures.ts: elfMachine) and whether it is static.

export interface ElfFacts {
  /** e_machine: 62 x86-64, 183 AArch64… */
  readonly machine: number;
  readonly bits: 32 | 64;
  /** the program interpreter (PT_INTERP) of a dynamically linked program */
  readonly interpreter?: string;
}

const PT_INTERP = 3;

/** The facts of an ELF file's bytes, or undefined when they are not an ELF file. */
export function elfFacts(data: Buffer): ElfFacts | undefined {
  if (data.length < 52 || data.readUInt32BE(0) !== 0x7f454c46) return undefined;
  const bits = data[4] === 2 ? 64 : data[4] === 1 ? 32 : undefined;
  const little = data[5] === 1;
  if (bits === undefined || (data[5] !== 1 && data[5] !== 2)) return undefined;
  const u16 = (at: number) => (little ? data.readUInt16LE(at) : data.readUInt16BE(at));
  const u32 = (at: number) => (little ? data.readUInt32LE(at) : data.readUInt32BE(at));
  const word = (at: number) => (bits === 64 ? Number(little ? data.readBigUInt64LE(at) : data.readBigUInt64BE(at)) : u32(at));
  const machine = u16(18);
  const phoff = word(bits === 64 ? 32 : 28);
  const phentsize = u16(bits === 64 ? 54 : 42);
  const phnum = u16(bits === 64 ? 56 : 44);
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (at + phentsize > data.length) break;
    if (u32(at) !== PT_INTERP) continue;
    const offset = word(at + (bits === 64 ? 8 : 4));
    const size = word(at + (bits === 64 ? 32 : 16));
    const interpreter = data.subarray(offset, offset + size).toString('latin1').replace(/\0.*$/s, '');
    return { machine, bits, interpreter };
  }
  return { machine, bits };
}

/** e_machine values by name, for messages. */
const MACHINE_NAMES: Record<number, string> = { 3: 'i386', 40: 'arm', 62: 'x86-64', 183: 'aarch64', 243: 'riscv', 21: 'ppc64' };

export function machineName(machine: number): string {
  return MACHINE_NAMES[machine] ?? `ELF machine ${machine}`;
}
