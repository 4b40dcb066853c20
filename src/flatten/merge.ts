// Pass 1 of the native export: which entry of which layer each path of the merged filesystem comes
// from. Layers are fed top-down (as go-containerregistry's mutate.Extract walks them), so the first entry
// seen for a path wins and everything a lower layer says about it is ignored. What an upper layer hides
// is remembered as two facts per path: it is *claimed* (decided: an entry won it, or a whiteout deleted
// it) and/or *sealed* (nothing below it comes from the layers further down).
//
// Rules (OCI image-spec layer.md; overlayfs for what the spec leaves open):
//   - `.wh.NAME` deletes NAME and everything under it from LOWER layers; an entry NAME in the same
//     layer as its whiteout stays. `.wh..wh..opq` seals its directory for lower layers, wherever it
//     sits in the tar. Whiteouts never reach the output.
//   - a non-directory seals its path: lower layers' entries under it are dropped. So does a directory
//     that sits on a lower non-directory (overlayfs stops merging there): a file replaced by a
//     directory and back again shows neither the first file nor what the directory held.
//   - within one layer the last entry for a path wins, as when the tar is extracted.
//   - a hard link resolves to an earlier entry of its own layer (podman cannot load cross-layer ones);
//     it survives even when its target is deleted or replaced higher up, and then carries the content
//     itself (see emit.ts for how link groups are written).
//   - bad input, refused with an error that names the layer and entries: an entry under a path that a
//     lower or the same layer made a non-directory (a symlink, a file), where no directory entry
//     replaces it. In a merged overlay view such a path cannot exist, and peers disagree about it:
//     podman replaces the symlink with a directory holding only the new entry (so `bin/foo` over a
//     `bin -> usr/bin` base loses all of /usr/bin), containerd writes through the link. Guessing either
//     silently is worse than asking for a fixed layer.
import { TarFormatError, UnsafeTarEntryError } from '../errors.js';
import { printable, type TarEntry } from '../layer/tar.js';
import { parseWhiteout } from '../layer/whiteout.js';
import type { ScannedEntry } from '../layer/tar-scan.js';

/** One piece of content in one layer: a tar entry and where its body lies in that layer's tar. */
export interface Inode {
  readonly entry: TarEntry;
  readonly bodyOffset: number;
  /** index into image.layers (0 = bottom) */
  readonly layer: number;
  /** some hard link resolves to it: paths sharing it are written as one link group */
  linked: boolean;
}

/** A path of the merged filesystem and the content it shows (for a hard link, the target's). */
export interface Winner {
  readonly path: string;
  readonly inode: Inode;
}

const WHITEOUT = Symbol('whiteout');

export class MergeIndex {
  readonly winners: Winner[] = [];
  readonly #claims = new Map<string, Winner | typeof WHITEOUT>();
  readonly #sealed = new Set<string>();
  /** directories that an upper layer's entries need but no layer has declared yet → the first such entry */
  readonly #implicit = new Map<string, { path: string; layer: number }>();
  #lastLayer = Number.POSITIVE_INFINITY;

  /** @param describe names a layer in errors ("IMAGE layer 2/3 (sha256:…)") */
  constructor(readonly describe: (layer: number) => string) {}

  /** Add the next layer down: `layer` must be lower than every layer added before. */
  addLayer(layer: number, entries: Iterable<ScannedEntry>): void {
    if (!(layer < this.#lastLayer)) throw new RangeError(`MergeIndex: layer ${layer} added out of top-down order`);
    this.#lastLayer = layer;
    const { own, whiteouts, opaques } = this.#readLayer(layer, entries);
    const seal: string[] = [];
    for (const [path, inode] of own) {
      if (this.#hiddenAbove(path)) continue;
      const isDir = inode.entry.type === 'directory';
      const claim = this.#claims.get(path);
      if (claim !== undefined) {
        // An upper directory over this non-directory: overlayfs stops merging here.
        if (claim !== WHITEOUT && claim.inode.entry.type === 'directory' && !isDir) seal.push(path);
        continue;
      }
      if (!this.#parentsAllow(path, own, layer)) continue;
      const needed = this.#implicit.get(path);
      if (needed) {
        if (!isDir) throw this.#underNonDirectory(needed.path, needed.layer, path, inode.entry, layer);
        this.#implicit.delete(path);
      }
      const winner: Winner = { path, inode };
      this.#claims.set(path, winner);
      this.winners.push(winner);
      if (!isDir) seal.push(path);
    }
    for (const target of whiteouts) {
      if (this.#hiddenAbove(target)) continue;
      if (!this.#claims.has(target)) this.#claims.set(target, WHITEOUT);
      seal.push(target);
    }
    for (const dir of opaques) if (!this.#hiddenAbove(dir)) seal.push(dir);
    for (const path of seal) this.#sealed.add(path);
  }

  /** One layer's final state: last entry per path (hard links resolved), and its whiteouts. */
  #readLayer(layer: number, entries: Iterable<ScannedEntry>) {
    const own = new Map<string, Inode>();
    const whiteouts: string[] = [];
    const opaques: string[] = [];
    for (const { entry, bodyOffset } of entries) {
      if (entry.path === '') continue; // the root: its metadata is the container runtime's business
      const whiteout = parseWhiteout(entry.path);
      if (whiteout) {
        if (whiteout.kind === 'whiteout') whiteouts.push(whiteout.target);
        else if (whiteout.kind === 'opaque') opaques.push(whiteout.dir);
        continue;
      }
      if (entry.type !== 'link') {
        own.set(entry.path, { entry, bodyOffset, layer, linked: false });
        continue;
      }
      const target = own.get(entry.linkname ?? '');
      if (!target || target.entry.type === 'directory') {
        const why = target
          ? 'which is a directory'
          : 'which is not an earlier entry of the same layer (cross-layer hard links are not supported; podman cannot load them either)';
        throw new TarFormatError(
          `${this.describe(layer)}: hard link ${printable(entry.path)} points to ${printable(entry.linkname ?? '')}, ${why}`,
          { entry: entry.path },
        );
      }
      target.linked = true;
      own.set(entry.path, target);
    }
    return { own, whiteouts, opaques };
  }

  /** Whether an upper layer hides `path`: the root or a proper ancestor is sealed. */
  #hiddenAbove(path: string): boolean {
    if (path === '') return false;
    if (this.#sealed.has('')) return true;
    for (let i = path.lastIndexOf('/'); i > 0; i = path.lastIndexOf('/', i - 1)) {
      if (this.#sealed.has(path.slice(0, i))) return true;
    }
    return false;
  }

  /**
   * Check the parents of a visible entry: false when the entry is hidden after all (its own layer made
   * a parent a non-directory that an upper directory replaced); throws when the entry sits under a
   * non-directory of its own layer; records parents no layer has declared yet.
   */
  #parentsAllow(path: string, own: Map<string, Inode>, layer: number): boolean {
    for (let i = path.lastIndexOf('/'); i > 0; i = path.lastIndexOf('/', i - 1)) {
      const parent = path.slice(0, i);
      const mine = own.get(parent);
      if (mine) {
        if (mine.entry.type === 'directory') return true;
        // An upper layer's directory replaced `parent`: what this layer put under it is hidden with it.
        const claim = this.#claims.get(parent);
        if (claim !== undefined && (claim === WHITEOUT || claim.inode.layer > layer)) return false;
        throw this.#underNonDirectory(path, layer, parent, mine.entry, layer);
      }
      if (this.#claims.has(parent) || this.#implicit.has(parent)) return true;
      this.#implicit.set(parent, { path, layer });
    }
    return true;
  }

  #underNonDirectory(path: string, layer: number, parent: string, parentEntry: TarEntry, parentLayer: number): Error {
    const what =
      parentEntry.type === 'symlink'
        ? `a symbolic link (-> ${printable(parentEntry.linkname ?? '')})`
        : parentEntry.type === 'file'
          ? 'a regular file'
          : `a ${parentEntry.type}`;
    const by = parentLayer === layer ? 'the same layer makes it' : `layer ${parentLayer + 1} below makes it`;
    return new UnsafeTarEntryError(
      `${this.describe(layer)}: entry ${printable(path)} lies under ${printable(parent)}, but ${by} ${what} and no ` +
        `directory entry replaces it; peers disagree on such images (podman replaces the link with a directory, ` +
        `containerd writes through it), so rebuild the layer with the path resolved or an explicit directory entry`,
      { entry: path },
    );
  }
}
