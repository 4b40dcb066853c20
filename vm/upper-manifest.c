/*
 * `dockvm-agent upper-manifest UPPER OUT DISK`: describe an overlay upper directory so that the host can write
 * the layer tar itself (vm/build/guest.sh step_pack; src/layer/upper-manifest.ts reads what this writes).
 *
 * Packing the upper with GNU tar in the guest pushes every byte through the emulated kernel twice (read
 * from the scratch disk, written to the output disk): about 11 MB/s under TCG. Instead this writes only
 * metadata onto OUT, and for each regular file where its bytes lie on DISK (FS_IOC_FIEMAP), the block
 * device UPPER's filesystem is on: the host reads them straight from that disk's image file. A file
 * whose extents cannot be given so (inline data, encoded or delayed extents, not on DISK, no FIEMAP)
 * has its bytes copied into the manifest instead. Entries and their metadata are what GNU tar --xattrs --xattrs-include='*' would
 * store: every xattr, a file or symlink with several links as links to the first path met, sockets left
 * out.
 *
 * One process walks the whole tree (under TCG a fork+exec costs ~50 ms), by chdir so that no path
 * length limit applies. Everything is written big-endian, like the agent's frames:
 *
 *   "DVMUPPR1"
 *   per entry (the first is UPPER itself, path ""):  'E', u32 path length, path (relative to UPPER, '/'-separated),
 *               u8 type ('f' file, 'd' directory, 'l' symlink, 'h' hard link, 'c', 'b', 'p' fifo),
 *               u32 mode (07777), u32 uid, u32 gid, i64 mtime seconds, u32 mtime nanoseconds,
 *               u64 size (files), u32 device major, u32 device minor,
 *               u32 link length, link (symlink target, or the path a hard link shares its inode with),
 *               u32 xattr count, per xattr: u32 name length, name, u32 value length, value,
 *               u8 body: 0 (not a file), 'x' (extents) or 'i' (inline: `size` bytes follow);
 *               'x': u32 count, per extent: u64 offset in the file, u64 offset on the disk, u64 length,
 *                    u32 flags (1: unwritten, reads as zeros); what no extent covers is a hole (zeros)
 *   the end:    'Z', u64 entries
 *
 * On success prints "dockvm-manifest-bytes=N" and "dockvm-upper-kib=K" (the upper's size on disk, as du -sk).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#define OUT_BUFFER (1u << 20)
#define FIEMAP_BATCH 256
/* Extent flags the host can follow; anything else (inline, encoded, delayed, unknown) → inline bytes. */
#define FIEMAP_UNDERSTOOD (FIEMAP_EXTENT_LAST | FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_MERGED | FIEMAP_EXTENT_SHARED)

static int out_fd = -1;
static unsigned char *out_buf;
static size_t out_len;
static uint64_t out_total;
static dev_t disk_dev;   /* DISK: where FIEMAP's offsets point, when UPPER's filesystem is on it */
static int use_extents;
static uint64_t entries, blocks_512;

/* the path of the entry being described, relative to the upper */
static char *path;
static size_t path_len, path_cap;

static void fail(const char *what, const char *name) {
  fprintf(stderr, "dockvm-agent: upper-manifest: %s %s: %s\n", what, name, strerror(errno));
  exit(1);
}

static void flush_out(void) {
  size_t done = 0;
  while (done < out_len) {
    ssize_t n = write(out_fd, out_buf + done, out_len - done);
    if (n < 0) { if (errno == EINTR) continue; fail("write", "the output disk"); }
    done += (size_t)n;
  }
  out_len = 0;
}

static void emit(const void *data, size_t len) {
  const unsigned char *p = data;
  out_total += len;
  while (len > 0) {
    if (out_len == OUT_BUFFER) flush_out();
    size_t n = OUT_BUFFER - out_len < len ? OUT_BUFFER - out_len : len;
    memcpy(out_buf + out_len, p, n);
    out_len += n; p += n; len -= n;
  }
}

static void emit_u8(unsigned v) { unsigned char b = (unsigned char)v; emit(&b, 1); }
static void emit_u32(uint32_t v) { unsigned char b[4] = { v >> 24, v >> 16, v >> 8, v }; emit(b, 4); }
static void emit_u64(uint64_t v) { emit_u32((uint32_t)(v >> 32)); emit_u32((uint32_t)v); }
static void emit_bytes(const void *data, size_t len) { emit_u32((uint32_t)len); emit(data, len); }

/* ---- hard links: the first path met of each inode with more than one link ------------------- */

struct inode_path { dev_t dev; ino_t ino; char *path; };
static struct inode_path *seen;
static size_t seen_count, seen_cap; /* open addressing; seen_cap is a power of two */

static size_t inode_slot(dev_t dev, ino_t ino) {
  uint64_t h = ((uint64_t)ino * 0x9E3779B97F4A7C15ull) ^ (uint64_t)dev;
  size_t i = (size_t)(h >> 17) & (seen_cap - 1);
  while (seen[i].path && !(seen[i].dev == dev && seen[i].ino == ino)) i = (i + 1) & (seen_cap - 1);
  return i;
}

/* The path this inode was first met at, or NULL (then this path is remembered for it). */
static const char *first_link(const struct stat *st) {
  if (seen_count * 2 >= seen_cap) {
    struct inode_path *old = seen;
    size_t old_cap = seen_cap;
    seen_cap = old_cap ? old_cap * 2 : 1024;
    seen = calloc(seen_cap, sizeof *seen);
    if (!seen) fail("allocate", "the hard link table");
    for (size_t i = 0; i < old_cap; i++)
      if (old[i].path) seen[inode_slot(old[i].dev, old[i].ino)] = old[i];
    free(old);
  }
  size_t i = inode_slot(st->st_dev, st->st_ino);
  if (seen[i].path) return seen[i].path;
  seen[i] = (struct inode_path){ st->st_dev, st->st_ino, strdup(path) };
  if (!seen[i].path) fail("allocate", path);
  seen_count++;
  return NULL;
}

/* ---- one entry -------------------------------------------------------------------------------- */

static void emit_xattrs(const char *name) {
  ssize_t list_len = llistxattr(name, NULL, 0);
  if (list_len < 0) {
    if (errno == ENOTSUP) { emit_u32(0); return; }
    fail("list the xattrs of", path);
  }
  char *list = malloc((size_t)list_len + 1);
  if (!list) fail("allocate", path);
  list_len = llistxattr(name, list, (size_t)list_len);
  if (list_len < 0) fail("list the xattrs of", path);
  uint32_t count = 0;
  for (ssize_t at = 0; at < list_len; at += (ssize_t)strlen(list + at) + 1) count++;
  emit_u32(count);
  for (ssize_t at = 0; at < list_len; at += (ssize_t)strlen(list + at) + 1) {
    const char *attr = list + at;
    ssize_t value_len = lgetxattr(name, attr, NULL, 0);
    char *value = value_len < 0 ? NULL : malloc((size_t)value_len + 1);
    if (value) value_len = lgetxattr(name, attr, value, (size_t)value_len);
    if (!value || value_len < 0) fail("read an xattr of", path);
    emit_bytes(attr, strlen(attr));
    emit_bytes(value, (size_t)value_len);
    free(value);
  }
  free(list);
}

struct extent { uint64_t logical, physical, length; uint32_t flags; };

/* The file's extents on the scratch disk, or -1 when they cannot describe its content. */
static long file_extents(int fd, const struct stat *st, struct extent **out) {
  static struct fiemap *fm;
  if (!fm) fm = malloc(sizeof *fm + FIEMAP_BATCH * sizeof(struct fiemap_extent));
  if (!fm) fail("allocate", path);
  size_t count = 0, cap = 0;
  struct extent *list = NULL;
  uint64_t start = 0, size = (uint64_t)st->st_size;
  while (start < size) {
    memset(fm, 0, sizeof *fm);
    fm->fm_start = start;
    fm->fm_length = size - start;
    fm->fm_flags = FIEMAP_FLAG_SYNC; /* delayed allocations are written, so every extent has a place */
    fm->fm_extent_count = FIEMAP_BATCH;
    if (ioctl(fd, FS_IOC_FIEMAP, fm) < 0) { free(list); return -1; }
    if (fm->fm_mapped_extents == 0) break;
    uint64_t asked = start;
    int last = 0;
    for (uint32_t i = 0; i < fm->fm_mapped_extents; i++) {
      const struct fiemap_extent *e = &fm->fm_extents[i];
      if (e->fe_flags & ~(uint32_t)FIEMAP_UNDERSTOOD || e->fe_length == 0) { free(list); return -1; }
      if (count == cap) {
        cap = cap ? cap * 2 : 16;
        list = realloc(list, cap * sizeof *list);
        if (!list) fail("allocate", path);
      }
      list[count++] = (struct extent){ e->fe_logical, e->fe_physical, e->fe_length,
                                       (e->fe_flags & FIEMAP_EXTENT_UNWRITTEN) ? 1u : 0u };
      start = e->fe_logical + e->fe_length;
      if (e->fe_flags & FIEMAP_EXTENT_LAST) last = 1;
    }
    if (last) break;
    if (start <= asked) { free(list); return -1; } /* no progress: do not trust these extents */
  }
  *out = list;
  return (long)count;
}

static void emit_inline(int fd, const struct stat *st) {
  static unsigned char buf[65536];
  emit_u8('i');
  uint64_t left = (uint64_t)st->st_size;
  while (left > 0) {
    ssize_t n = read(fd, buf, left < sizeof buf ? (size_t)left : sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("read", path);
    if (n == 0) { errno = EIO; fail("read (shorter than its size)", path); }
    emit(buf, (size_t)n);
    left -= (uint64_t)n;
  }
}

static void emit_body(const char *name, const struct stat *st) {
  int fd = open(name, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) fail("open", path);
  struct extent *list = NULL;
  long count = use_extents && st->st_dev == disk_dev ? file_extents(fd, st, &list) : -1;
  if (count < 0) {
    emit_inline(fd, st);
  } else {
    emit_u8('x');
    emit_u32((uint32_t)count);
    for (long i = 0; i < count; i++) {
      emit_u64(list[i].logical);
      emit_u64(list[i].physical);
      emit_u64(list[i].length);
      emit_u32(list[i].flags);
    }
  }
  free(list);
  close(fd);
}

/* One entry, `name` relative to the current directory, `path` relative to the upper. */
static void describe(const char *name, const struct stat *st) {
  char type;
  if (S_ISREG(st->st_mode)) type = 'f';
  else if (S_ISDIR(st->st_mode)) type = 'd';
  else if (S_ISLNK(st->st_mode)) type = 'l';
  else if (S_ISCHR(st->st_mode)) type = 'c';
  else if (S_ISBLK(st->st_mode)) type = 'b';
  else if (S_ISFIFO(st->st_mode)) type = 'p';
  else { fprintf(stderr, "dockvm-agent: upper-manifest: %s: socket ignored\n", path); return; } /* as GNU tar */
  /* GNU tar links only files and symlinks: devices and fifos (overlayfs' whiteouts share one inode) are
   * archived each on their own */
  const char *holder = (type == 'f' || type == 'l') && st->st_nlink > 1 ? first_link(st) : NULL;
  if (!holder) blocks_512 += (uint64_t)st->st_blocks; /* du counts an inode once */
  entries++;
  emit_u8('E');
  emit_bytes(path, path_len);
  emit_u8(holder ? 'h' : (unsigned char)type);
  emit_u32(st->st_mode & 07777);
  emit_u32(st->st_uid);
  emit_u32(st->st_gid);
  emit_u64((uint64_t)(int64_t)st->st_mtim.tv_sec);
  emit_u32((uint32_t)st->st_mtim.tv_nsec);
  emit_u64(type == 'f' && !holder ? (uint64_t)st->st_size : 0);
  emit_u32(type == 'c' || type == 'b' ? major(st->st_rdev) : 0);
  emit_u32(type == 'c' || type == 'b' ? minor(st->st_rdev) : 0);
  if (holder) {
    emit_bytes(holder, strlen(holder));
  } else if (type == 'l') {
    char target[PATH_MAX + 1];
    ssize_t n = readlink(name, target, sizeof target);
    if (n < 0 || n > PATH_MAX) fail("read the symlink", path);
    emit_bytes(target, (size_t)n);
  } else {
    emit_u32(0);
  }
  if (holder) {
    emit_u32(0); /* a hard link's xattrs are its holder's, as in a tar */
    emit_u8(0);
    return;
  }
  emit_xattrs(name);
  if (type == 'f') emit_body(name, st);
  else emit_u8(0);
}

static void path_push(const char *name) {
  size_t len = strlen(name), need = path_len + len + 2;
  if (need > path_cap) {
    path_cap = need * 2;
    path = realloc(path, path_cap);
    if (!path) fail("allocate", name);
  }
  if (path_len) path[path_len++] = '/';
  memcpy(path + path_len, name, len + 1);
  path_len += len;
}

static void path_pop(size_t len) { path_len = len; path[len] = 0; }

/* Every entry below the current directory, whose path is `path`. */
static void walk(void) {
  DIR *dir = opendir(".");
  if (!dir) fail("open the directory", path_len ? path : ".");
  /* the names first: no directory stays open while its subdirectories are walked */
  char **names = NULL;
  size_t count = 0, cap = 0;
  struct dirent *e;
  errno = 0;
  while ((e = readdir(dir))) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    if (count == cap) {
      cap = cap ? cap * 2 : 64;
      names = realloc(names, cap * sizeof *names);
      if (!names) fail("allocate", path);
    }
    if (!(names[count++] = strdup(e->d_name))) fail("allocate", path);
  }
  if (errno) fail("read the directory", path_len ? path : ".");
  closedir(dir);
  size_t parent_len = path_len;
  for (size_t i = 0; i < count; i++) {
    path_push(names[i]);
    struct stat st;
    if (lstat(names[i], &st) < 0) fail("stat", path);
    describe(names[i], &st);
    if (S_ISDIR(st.st_mode)) {
      int fd = open(names[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0 || fchdir(fd) < 0) fail("enter", path);
      close(fd);
      walk();
      if (chdir("..") < 0) fail("leave", path);
    }
    path_pop(parent_len);
    free(names[i]);
  }
  free(names);
}

int upper_manifest(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: dockvm-agent upper-manifest UPPER OUT DISK\n");
    return 2;
  }
  const char *upper = argv[0], *out = argv[1], *disk = argv[2];
  out_buf = malloc(OUT_BUFFER);
  path_cap = 4096;
  path = malloc(path_cap);
  if (!out_buf || !path) fail("allocate", "buffers");
  path[0] = 0;
  struct stat root;
  if (lstat(upper, &root) < 0 || !S_ISDIR(root.st_mode)) { if (!errno) errno = ENOTDIR; fail("stat", upper); }
  int root_fd = open(upper, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (root_fd < 0) fail("open", upper);
  /* Everything written reaches the disk before a single extent is asked for (FIEMAP_FLAG_SYNC also does,
   * file by file; one syncfs writes it all in one go). */
  if (syncfs(root_fd) < 0) fail("sync the filesystem of", upper);
  /* FIEMAP's offsets are on the filesystem's block device: they mean something to the host only when
   * that is DISK, whose image it reads. */
  struct stat disk_st;
  if (stat(disk, &disk_st) < 0) fail("stat", disk);
  use_extents = S_ISBLK(disk_st.st_mode) && disk_st.st_rdev == root.st_dev;
  disk_dev = disk_st.st_rdev;
  if (fchdir(root_fd) < 0) fail("enter", upper);
  close(root_fd);

  out_fd = open(out, O_WRONLY | O_CLOEXEC);
  if (out_fd < 0) fail("open", out);
  emit("DVMUPPR1", 8);
  /* the upper's root first, with path "" (as GNU tar's "./"): the layer leaves it out, but the host warns
   * when a script changed it (src/build/root-change.ts) */
  describe(".", &root);
  walk();
  emit_u8('Z');
  emit_u64(entries);
  flush_out();
  /* the host reads OUT's image file as soon as this returns: the data must have left the guest */
  if (fsync(out_fd) < 0) fail("sync", out);
  close(out_fd);
  /* what the upper takes on disk, as du -sk counts it */
  printf("dockvm-manifest-bytes=%llu\ndockvm-upper-kib=%llu\n", (unsigned long long)out_total, (unsigned long long)(blocks_512 + 1) / 2);
  return 0;
}
