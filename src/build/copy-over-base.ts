// Where copyToRoot's entries land over the base, decided on the host from the base layers' headers
// before any VM boots. Every current Debian, Ubuntu and Fedora base has `/bin -> usr/bin` (and lib,
// sbin): keepContentsDirlinks keeps nixpkgs' meaning (rsync -K vs -k), so with true a copied `bin/`
// goes through the link into usr/bin, and with false (the default) it replaces the link by a directory
// holding only what was copied, which hides everything the link led to (nixpkgs #57073). dockvm says so:
// a warning naming the link, and an error when that hides the image's shell or the script's interpreter
// (never a quiet fallback to the bundled bash, which is for bases that never had one).
//
// Each entry is given the path it lands on (through the base's links), so the guest's tar never
// follows a link of the base itself, and the host-made layer (no runAsRoot) gets the same paths.
// The model is GNU tar's extraction: a directory entry over a symbolic link replaces it, unless the
// link leads to a directory and keepContentsDirlinks is true (--keep-directory-symlink); any other
// entry replaces what is at its path; the parents of a path are followed through links.
import { SpecError } from '../errors.js';
import { MergeIndex } from '../flatten/merge.js';
import type { Image } from '../image/image.js';
import { layerHeaders } from '../layer/tar-scan.js';
import { printable, type TarEntry } from '../layer/tar.js';

/** A link of the base that a copied directory replaced. */
export interface ReplacedLink {
  /** where the link was, without a leading "/" */
  readonly path: string;
  /** what it pointed to, as written */
  readonly target: string;
  /** the directory it led to */
  readonly resolved: string;
}

type Node = { readonly type: TarEntry['type']; readonly linkname?: string };

/** Symbolic links followed at most this often in one lookup (Linux's MAXSYMLINKS). */
const MAX_LINKS = 40;

/** The paths of a filesystem tree as far as lookups go: what is at each path, links followed as the kernel does. */
class Tree {
  readonly #nodes = new Map<string, Node>();

  set(path: string, node: Node): void {
    this.#nodes.set(path, node);
    // parents a tar leaves implied are directories
    for (let at = parentOf(path); at !== '' && !this.#nodes.has(at); at = parentOf(at)) this.#nodes.set(at, { type: 'directory' });
  }

  clone(): Tree {
    const copy = new Tree();
    for (const [path, node] of this.#nodes) copy.#nodes.set(path, node);
    return copy;
  }

  /** What is at `path` itself (no link followed in its last component). */
  get(path: string): Node | undefined {
    return path === '' ? { type: 'directory' } : this.#nodes.get(path);
  }

  /**
   * The path `path` leads to, links followed (in the last component too when `followLast`); with
   * `create`, missing components are taken as the directories tar would make. Undefined: it leads nowhere.
   */
  resolve(path: string, options: { followLast?: boolean; create?: boolean } = {}): string | undefined {
    const pending = components(path);
    const done: string[] = [];
    let links = 0;
    while (pending.length > 0) {
      const name = pending.shift()!;
      if (name === '..') {
        done.pop();
        continue;
      }
      const at = [...done, name].join('/');
      const node = this.#nodes.get(at);
      if (node === undefined) {
        if (!options.create) return undefined;
        done.push(name);
        continue;
      }
      if (node.type === 'symlink' && (pending.length > 0 || options.followLast)) {
        if (++links > MAX_LINKS) return undefined;
        const target = node.linkname ?? '';
        if (target.startsWith('/')) done.length = 0;
        pending.unshift(...components(target));
        continue;
      }
      if (pending.length > 0 && node.type !== 'directory') return undefined;
      done.push(name);
    }
    return done.join('/');
  }

  /** Whether `path` leads to something that exists (links followed). */
  has(path: string): boolean {
    const resolved = this.resolve(path, { followLast: true });
    return resolved !== undefined && this.get(resolved) !== undefined;
  }
}

function components(path: string): string[] {
  return path.split('/').filter((name) => name !== '' && name !== '.');
}

function parentOf(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash < 0 ? '' : path.slice(0, slash);
}

/** The merged filesystem of an image's layers, as paths (src/flatten's merge index: whiteouts applied). */
export async function baseTree(image: Image, source: string): Promise<Tree> {
  const count = image.layers.length;
  const describe = (i: number) => `${source}: layer ${i + 1}/${count} (${image.layers[i]!.diffId})`;
  const index = new MergeIndex(describe);
  for (let i = count - 1; i >= 0; i--) index.addLayer(i, await layerHeaders(image.layers[i]!, describe(i)));
  const tree = new Tree();
  for (const { path, inode } of index.winners) {
    const { type, linkname } = inode.entry;
    tree.set(path, type === 'symlink' ? { type, linkname: linkname ?? '' } : { type });
  }
  return tree;
}

/** Places copyToRoot's entries, in the order the tar holds them, over a base (or over nothing: FROM scratch). */
export class CopyPlacement {
  readonly replaced: ReplacedLink[] = [];
  readonly #tree: Tree;
  /** the base, untouched, for what the copy hides */
  readonly #base: Tree;
  /** an entry's path in the copy → where it landed, for hard links */
  readonly #landed = new Map<string, string>();

  constructor(base: Tree | undefined, private readonly keepDirlinks: boolean) {
    this.#base = base ?? new Tree();
    this.#tree = base ? base.clone() : new Tree();
  }

  /** `entry` at the path it lands on; undefined when nothing is written (a directory kept as the base's link). */
  place(entry: TarEntry): TarEntry | undefined {
    const parent = this.#tree.resolve(parentOf(entry.path), { followLast: true, create: true }) ?? parentOf(entry.path);
    const name = entry.path.slice(entry.path.lastIndexOf('/') + 1);
    const path = parent === '' ? name : `${parent}/${name}`;
    this.#landed.set(entry.path, path);
    const existing = this.#tree.get(path);
    if (entry.type === 'directory' && existing?.type === 'symlink') {
      const resolved = this.#tree.resolve(path, { followLast: true });
      const toDirectory = resolved !== undefined && this.#tree.get(resolved)?.type === 'directory';
      if (toDirectory && this.keepDirlinks) return undefined;
      if (toDirectory && this.#base.get(path)?.type === 'symlink') this.replaced.push({ path, target: existing.linkname ?? '', resolved: resolved! });
    }
    this.#tree.set(path, entry.type === 'symlink' ? { type: 'symlink', linkname: entry.linkname ?? '' } : { type: entry.type === 'link' ? 'file' : entry.type });
    const linkname = entry.type === 'link' && entry.linkname !== undefined ? (this.#landed.get(entry.linkname) ?? entry.linkname) : entry.linkname;
    return { ...entry, path, ...(linkname !== undefined ? { linkname } : {}) };
  }

  /** Those of `paths` (absolute) that the base had and the copy made unreachable. */
  hidden(paths: readonly string[]): string[] {
    return paths.filter((path) => this.#base.has(path) && !this.#tree.has(path));
  }
}

/** The paths a hidden `shell` lay under: the replaced links that lead to it. */
function linksHiding(replaced: readonly ReplacedLink[], shell: string): ReplacedLink[] {
  const path = shell.replace(/^\/+/, '');
  return replaced.filter((link) => path === link.path || path.startsWith(`${link.path}/`));
}

/** A warning for each link a copied directory replaced. */
export function replacedLinkWarnings(placement: CopyPlacement): string[] {
  return placement.replaced.map((link) => `${describeReplaced(link)}, so the image loses what ${printable(`/${link.path}`)} held; ${advice(link)}`);
}

/**
 * The error when the copy hides the image's shell or the script's interpreter (`shells`: absolute
 * paths), undefined when it hides none of them.
 */
export function hiddenShellError(placement: CopyPlacement, shells: readonly string[]): SpecError | undefined {
  const hidden = placement.hidden(shells);
  if (hidden.length === 0) return undefined;
  const links = [...new Set(hidden.flatMap((shell) => linksHiding(placement.replaced, shell)))];
  const link = links[0];
  const which = hidden.map((path) => printable(path)).join(' and ');
  const message = link
    ? `${describeReplaced(link)}, which hides the image's ${which}; ${advice(link)}`
    : `copyToRoot hides the image's ${which}`;
  return new SpecError(message, [], { field: 'keepContentsDirlinks' });
}

function describeReplaced(link: ReplacedLink): string {
  return `copyToRoot replaces the base's symbolic link ${printable(`/${link.path}`)} (-> ${printable(link.target)}) with a directory`;
}

function advice(link: ReplacedLink): string {
  return `set keepContentsDirlinks: true to copy into ${printable(`/${link.resolved}`)} instead`;
}
