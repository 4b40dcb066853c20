// Host programs the guest needs beyond busybox, copied into the initramfs with the shared libraries
// they load. GNU tar: the build VM packs the overlay's upper directory and unpacks copyToRoot with it,
// because busybox tar keeps neither xattrs (security.capability, trusted.overlay.*) nor PAX records.
import { readFile } from 'node:fs/promises';
import { execa } from 'execa';
import { MissingToolError } from '../errors.js';

export interface GuestFile {
  /** path in the guest, without a leading "/" */
  path: string;
  data: Buffer;
  mode: number;
}

/** Where GNU tar lives in the guest (vm/build/guest.sh uses this path; busybox owns /bin/tar). */
export const GUEST_GNU_TAR = 'usr/lib/dockvm/tar';

/** GNU tar and its libraries, from the host (DOCKVM_GNU_TAR, else /bin/tar). */
export async function guestTools(env: NodeJS.ProcessEnv = process.env): Promise<GuestFile[]> {
  const tar = env.DOCKVM_GNU_TAR || '/bin/tar';
  const version = await execa(tar, ['--version'], { stdin: 'ignore', reject: false });
  if (version.exitCode !== 0 || !String(version.stdout).includes('GNU tar')) {
    throw new MissingToolError(`${tar} is not GNU tar; install tar (apt-get install tar) or point DOCKVM_GNU_TAR at GNU tar`);
  }
  const files: GuestFile[] = [{ path: GUEST_GNU_TAR, data: await readFile(tar), mode: 0o755 }];
  for (const library of await sharedLibraries(tar)) {
    files.push({ path: library.replace(/^\/+/, ''), data: await readFile(library), mode: 0o755 });
  }
  return files;
}

/** The absolute paths of the libraries (and the program interpreter) `program` loads, as ldd lists them. */
async function sharedLibraries(program: string): Promise<string[]> {
  const { stdout } = await execa('ldd', [program], { stdin: 'ignore' });
  const paths: string[] = [];
  for (const line of String(stdout).split('\n')) {
    const match = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line);
    if (match) paths.push(match[1]!);
  }
  return paths.sort();
}
