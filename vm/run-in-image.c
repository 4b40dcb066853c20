/*
 * `dockvm-agent run-in-image ROOT TOOLS NAME=VALUE... -- ALTERNATIVES...`: run a command in the
 * image mounted at ROOT, as guest.sh's step_run describes: chrooted, in fresh mount, pid, uts and ipc
 * namespaces, with /proc, /sys, a /dev of its own and the bundled tools (TOOLS, read-only at /.dockvm)
 * mounted, in a memory cgroup a little smaller than the VM and a process limit (DOCKVM_MAX_PROCESSES,
 * else one per 2 MiB of memory; met, the command is killed and "dockvm-pids-max=N" reported); the environment is exactly NAME=VALUE...;
 * what runs is the first of ALTERNATIVES the image can run (launch, below). The mount points this makes and the image lacks are removed afterwards, and OOM kills
 * reported ("dockvm-oom-kills=N" on stderr). Exits with the command's status (128 + N for signal N).
 *
 * One process instead of guest.sh's ~25 busybox forks (a fork+exec costs 10-50 ms under TCG). With
 * DOCKVM_SCRIPT_NAME set, DOCKVM_SCRIPT is written to /dev/pipes/NAME on that /dev (a runAsRoot script).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>

#define CGROUP "/sys/fs/cgroup"
#define MAX_CREATED 8

static char created[MAX_CREATED][4200];
static int created_count;

static int fail(const char *what, const char *path) {
  fprintf(stderr, "dockvm-guest: %s %s: %s\n", what, path, strerror(errno));
  return 70;
}

static int write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return -1;
  size_t len = strlen(text), done = 0;
  while (done < len) {
    ssize_t n = write(fd, text + done, len - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) { int e = errno; close(fd); errno = e; return -1; }
    done += (size_t)n;
  }
  return close(fd);
}

static int exists(const char *path) {
  struct stat st;
  return lstat(path, &st) == 0;
}

static int is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *path, int follow) {
  struct stat st;
  return (follow ? stat(path, &st) : lstat(path, &st)) == 0 && S_ISREG(st.st_mode);
}

/* A mount point the image lacks: made now, removed afterwards, so that it leaves no trace in the layer. */
static int make_mount_point(const char *root, const char *name, int dir) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", root, name);
  if (exists(path)) return 0;
  if (dir ? mkdir(path, 0755) : write_file(path, "")) return fail("make the mount point", path);
  if (created_count < MAX_CREATED) snprintf(created[created_count++], sizeof created[0], "%s", path);
  return 0;
}

static void remove_mount_points(void) {
  for (int i = created_count - 1; i >= 0; i--)
    if (rmdir(created[i]) && errno == ENOTDIR) unlink(created[i]);
}

/* The script's memory cgroup: the VM's memory less a quarter (at least 48 MiB) of headroom for the
 * agent, the kernel and the page cache of the lowers, and never more than what is available now less
 * RESERVE_KIB, which the kernel's own work (reading the lowers back in under pressure) needs: a small VM
 * has little available beyond the headroom. A script that wants more is OOM-killed at once, instead of
 * the whole guest thrashing (no swap: it would evict every process's code pages and crawl under TCG). */
#define RESERVE_KIB (24 * 1024)
/* The command's process limit: DOCKVM_MAX_PROCESSES when the user set it (src/build/vm-layer.ts), else
 * one per 2 MiB of the VM's memory (235 in a 512 MiB VM, MemTotal being less): a fork bomb meets it before its memory runs out. */
static char max_text[32];
static const char *max_processes(void) {
  const char *max = getenv("DOCKVM_MAX_PROCESSES");
  return max && *max ? max : max_text;
}
static int limit_memory(void) {
  /* CGROUP/script itself vm/init made, before the VM was saved (it cost ~18 ms of each run under TCG) */
  long long total_kib = -1, available_kib = -1, value;
  char line[128];
  FILE *meminfo = fopen("/proc/meminfo", "re");
  while (meminfo && fgets(line, sizeof line, meminfo)) {
    if (sscanf(line, "MemTotal: %lld kB", &value) == 1) total_kib = value;
    if (sscanf(line, "MemAvailable: %lld kB", &value) == 1) available_kib = value;
  }
  if (meminfo) fclose(meminfo);
  if (total_kib < 0 || available_kib < 0) { errno = ENODATA; return fail("read MemTotal and MemAvailable from", "/proc/meminfo"); }
  long long headroom = total_kib / 4 < 49152 ? 49152 : total_kib / 4;
  long long limit_kib = total_kib - headroom < available_kib - RESERVE_KIB ? total_kib - headroom : available_kib - RESERVE_KIB;
  char text[64];
  snprintf(text, sizeof text, "%lld", (limit_kib < 16384 ? 16384 : limit_kib) * 1024);
  if (write_file(CGROUP "/script/memory.max", text)) return fail("limit the memory of", CGROUP "/script");
  /* and its processes (threads count): a fork bomb meets this long before its memory runs out */
  snprintf(max_text, sizeof max_text, "%lld", total_kib / 2048 < 64 ? 64 : total_kib / 2048);
  if (write_file(CGROUP "/script/pids.max", max_processes())) return fail("limit the processes of", CGROUP "/script");
  snprintf(text, sizeof text, "%d", (int)getpid());
  if (write_file(CGROUP "/script/cgroup.procs", text)) return fail("enter", CGROUP "/script");
  return 0;
}

/* The count of the line `format` ("KEY %lld") matches in a cgroup events file; 0 without one. */
static long long cgroup_event(const char *file, const char *format) {
  FILE *events = fopen(file, "re");
  char line[128];
  long long count = 0;
  while (events && fgets(line, sizeof line, events))
    if (sscanf(line, format, &count) == 1) break;
  if (events) fclose(events);
  return count;
}

static void report_oom(void) {
  long long kills = cgroup_event(CGROUP "/script/memory.events", "oom_kill %lld");
  if (kills > 0) fprintf(stderr, "dockvm-oom-kills=%lld\n", kills);
}

/* How often the script's cgroup met its pids.max. */
static long long pids_max_events(void) { return cgroup_event(CGROUP "/script/pids.events", "max %lld"); }

static int mount_at(const char *root, const char *what, const char *where, const char *type, unsigned long flags, const char *options) {
  char path[4200];
  snprintf(path, sizeof path, "%s%s", root, where);
  if (mount(what, path, type, flags, options)) return fail("mount on", path);
  return 0;
}

/* Waits for `pid` (into *wstatus); when the script's cgroup meets its process limit first, calls stop(pid)
 * and returns 1. A command that meets the limit is a fork bomb, not a slow build: a refused fork only
 * makes bash retry, so it is stopped here, instead of running until --timeout. Woken by the child's
 * exit (its pidfd) or by the kernel's notice that pids.events changed: no polling, no delay. */
static int wait_guarded(pid_t pid, int *wstatus, void (*stop)(pid_t)) {
  int bomb = 0;
#ifdef SYS_pidfd_open
  int pidfd = (int)syscall(SYS_pidfd_open, pid, 0), events = open(CGROUP "/script/pids.events", O_RDONLY | O_CLOEXEC);
  char scratch[256];
  if (pidfd >= 0 && events >= 0 && pread(events, scratch, sizeof scratch, 0) >= 0) {
    for (;;) {
      struct pollfd fds[2] = { { pidfd, POLLIN, 0 }, { events, POLLPRI, 0 } };
      if (poll(fds, 2, -1) < 0 && errno != EINTR) break;
      if (fds[0].revents) break;
      if (fds[1].revents) {
        if (pread(events, scratch, sizeof scratch, 0) < 0) break; /* rearms the notice */
        if (pids_max_events() > 0) { bomb = 1; stop(pid); break; }
      }
    }
  }
  if (pidfd >= 0) close(pidfd);
  if (events >= 0) close(events);
#endif
  while (waitpid(pid, wstatus, 0) < 0 && errno == EINTR) {}
  return bomb;
}

/* run-in-image's child is PID 1 of its namespace: killing it kills every process in it */
static void stop_namespace(pid_t pid) { kill(pid, SIGKILL); }

/* pids-guard's child is not (guest.sh's unshare, whose child is): every process of the cgroup, which
 * pids-guard itself has stayed out of */
static void stop_cgroup(pid_t pid) { (void)pid; write_file(CGROUP "/script/cgroup.kill", "1"); }

/*
 * `dockvm-agent pids-guard COMMAND ARG...`: COMMAND run in the script's cgroup (guest.sh limit_memory
 * made it), stopped as a fork bomb when the cgroup meets its process limit ("dockvm-pids-max=N" on
 * stderr, as run-in-image does). Exits with COMMAND's status (128 + N for signal N).
 */
int pids_guard(int argc, char **argv) {
  if (argc < 1) { fprintf(stderr, "dockvm-guest: usage: pids-guard COMMAND ARG...\n"); return 70; }
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) return fail("fork for", argv[0]);
  if (pid == 0) {
    char text[32];
    snprintf(text, sizeof text, "%d", (int)getpid());
    if (write_file(CGROUP "/script/cgroup.procs", text)) _exit(fail("enter", CGROUP "/script"));
    execvp(argv[0], argv);
    _exit(fail("run", argv[0]));
  }
  int wstatus, bomb = wait_guarded(pid, &wstatus, stop_cgroup);
  if (bomb) {
    char limit[32] = "";
    FILE *max = fopen(CGROUP "/script/pids.max", "re");
    if (max && fgets(limit, sizeof limit, max)) limit[strcspn(limit, "\n")] = 0;
    if (max) fclose(max);
    fprintf(stderr, "dockvm-pids-max=%s\n", limit);
  }
  return WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
}

/* bash's PATH when the environment has none: a command name is still found */
#define DEFAULT_PATH "/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin:."

/* The value of NAME in env (NAME=VALUE...), or NULL. */
static char *env_value(char **env, const char *name) {
  size_t len = strlen(name);
  for (; *env; env++)
    if (strncmp(*env, name, len) == 0 && (*env)[len] == '=') return *env + len + 1;
  return NULL;
}

/* execve of a program named as a shell's exec finds it: with a "/" as given, else the first executable
 * regular file of that name in PATH (else the first regular file, whose execve then says why not). */
static void exec_found(char **argv, char **env) {
  const char *name = argv[0];
  if (strchr(name, '/')) { execve(name, argv, env); return; }
  const char *path = env_value(env, "PATH");
  if (!path) path = DEFAULT_PATH;
  char candidate[4200], first[4200] = "";
  struct stat st;
  for (const char *dir = path;; dir = strchr(dir, ':') + 1) {
    size_t len = strcspn(dir, ":");
    snprintf(candidate, sizeof candidate, "%.*s%s%s", (int)len, len ? dir : ".", "/", name);
    if (stat(candidate, &st) == 0 && S_ISREG(st.st_mode)) {
      if (access(candidate, X_OK) == 0) { execve(candidate, argv, env); return; }
      if (!first[0]) snprintf(first, sizeof first, "%s", candidate);
    }
    if (!dir[len]) break;
  }
  if (first[0]) { execve(first, argv, env); return; }
  errno = ENOENT;
}

/*
 * The launcher (once bash with a script of guest.sh's): in the image, as root, in the environment the
 * command gets, run the first of the host's alternatives whose program the image has, never one after a
 * program that exists but fails to execute (a binary of another platform is reported, not replaced).
 * ALTERNATIVES: each NOTICE COUNT PROGRAM ARG... (COUNT: how many words PROGRAM ARG... are; NOTICE,
 * unless "-", is printed on stderr when it is chosen). The last one runs whether its program exists or
 * not, so that a missing one is reported. PROGRAM without a "/" is found in PATH. An image without a
 * shell of its own gets the bundled utilities after its own programs. Returns only on failure, with the
 * status a shell gives (127: not found; 126: found, not executable), having said why; the host
 * recognises the last line (src/build/interpreter.ts). A cold bash cost ~80 ms under TCG before it ran
 * anything.
 */
static int launch(int argc, char **argv, char **env) {
  struct stat st;
  if (stat("/bin/sh", &st) && stat("/bin/bash", &st)) {
    static char path[8192];
    const char *old = env_value(env, "PATH");
    snprintf(path, sizeof path, "PATH=%s%s/.dockvm", old && *old ? old : "", old && *old ? ":" : "");
    char **entry = env;
    while (*entry && strncmp(*entry, "PATH=", 5) != 0) entry++;
    *entry = path; /* env has room for one more (run_in_image) */
  }
  int i = 0;
  while (i + 2 < argc) {
    const char *notice = argv[i];
    int count = atoi(argv[i + 1]);
    if (count < 1 || i + 2 + count > argc) { fprintf(stderr, "dockvm-guest: run-in-image: bad alternative at %s\n", notice); return 70; }
    char **program = argv + i + 2;
    i += 2 + count;
    int last = i >= argc;
    if (!last && program[0][0] == '/' && stat(program[0], &st) != 0) continue;
    if (strcmp(notice, "-") != 0) fprintf(stderr, "%s\n", notice);
    char *saved = program[count];
    program[count] = NULL;
    exec_found(program, env);
    int error = errno, status = error == ENOENT ? 127 : 126;
    program[count] = saved;
    if (error == ENOENT && !strchr(program[0], '/')) fprintf(stderr, "dockvm: %s: not found\n", program[0]);
    else fprintf(stderr, "dockvm: %s: %s\n", program[0], strerror(error));
    fprintf(stderr, "dockvm: cannot execute %s in the image (exit %d)\n", program[0], status);
    return status;
  }
  fprintf(stderr, "dockvm-guest: run-in-image: no alternative to run\n");
  return 127;
}

/* In the new namespaces (PID 1 of its own): the image's /proc, /sys, /dev and /.dockvm, then the command. */
static int enter(const char *root, const char *tools, int argc, char **argv) {
  char path[4200];
  /* nothing mounted here reaches the guest's other mounts, nor theirs this one */
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)) return fail("make private", "/");
  if (mount_at(root, "proc", "/proc", "proc", 0, NULL) ||
      mount_at(root, "sysfs", "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) ||
      mount_at(root, "dev", "/dev", "tmpfs", MS_NOSUID, "mode=755,size=65536k"))
    return 70;
  static const struct { const char *name; unsigned major, minor; } devices[] = {
    { "null", 1, 3 }, { "zero", 1, 5 }, { "full", 1, 7 }, { "random", 1, 8 }, { "urandom", 1, 9 }, { "tty", 5, 0 },
  };
  mode_t mask = umask(0);
  for (size_t i = 0; i < sizeof devices / sizeof devices[0]; i++) {
    snprintf(path, sizeof path, "%s/dev/%s", root, devices[i].name);
    if (mknod(path, S_IFCHR | 0666, makedev(devices[i].major, devices[i].minor))) return fail("make the device", path);
  }
  umask(mask);
  static const char *dirs[] = { "pts", "shm", "pipes" };
  for (size_t i = 0; i < 3; i++) {
    snprintf(path, sizeof path, "%s/dev/%s", root, dirs[i]);
    if (mkdir(path, 0755)) return fail("make the directory", path);
  }
  if (mount_at(root, "devpts", "/dev/pts", "devpts", 0, "newinstance,ptmxmode=0666,mode=620")) return 70;
  static const char *links[][2] = {
    { "pts/ptmx", "ptmx" }, { "/proc/self/fd", "fd" }, { "/proc/self/fd/0", "stdin" }, { "/proc/self/fd/1", "stdout" }, { "/proc/self/fd/2", "stderr" },
  };
  for (size_t i = 0; i < sizeof links / sizeof links[0]; i++) {
    snprintf(path, sizeof path, "%s/dev/%s", root, links[i][1]);
    if (symlink(links[i][0], path)) return fail("make the link", path);
  }
  if (mount_at(root, "shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")) return 70;
  const char *script_name = getenv("DOCKVM_SCRIPT_NAME"), *script = getenv("DOCKVM_SCRIPT");
  if (script_name && *script_name) {
    snprintf(path, sizeof path, "%s/dev/pipes/%s", root, script_name);
    if (write_file(path, script ? script : "")) return fail("write the script to", path);
  }
  /* read-only: a command cannot change the tools the next one gets */
  if (mount_at(root, tools, "/.dockvm", NULL, MS_BIND, NULL) || mount_at(root, NULL, "/.dockvm", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL)) return 70;
  /* With network, the image resolves names through QEMU's DNS forwarder, as Docker bind-mounts its
   * resolv.conf (over the image's, or over the mount point this made and removes). */
  snprintf(path, sizeof path, "%s/etc/resolv.conf", root);
  if (is_file("/etc/resolv.conf", 1) && is_file(path, 0) && mount_at(root, "/etc/resolv.conf", "/etc/resolv.conf", NULL, MS_BIND, NULL)) return 70;
  if (sethostname("dockvm", 6)) return fail("set the hostname", "dockvm");

  /* env -i NAME=VALUE... chroot ROOT, then the launcher with ALTERNATIVES */
  int split = 0;
  while (split < argc && strcmp(argv[split], "--") != 0) split++;
  if (split == argc) { fprintf(stderr, "dockvm-guest: run-in-image: no -- before the alternatives\n"); return 70; }
  char **env = calloc((size_t)split + 2, sizeof *env); /* room for a PATH the launcher adds */
  for (int i = 0; i < split; i++) env[i] = argv[i];
  if (chroot(root) || chdir("/")) return fail("chroot to", root);
  /* On a terminal (dockvm shell), a session of its own whose controlling terminal is the pty: job
   * control works, and the shell can hand the terminal back when it exits. */
  if (isatty(0)) { setsid(); ioctl(0, TIOCSCTTY, 1); }
  return launch(argc - split - 1, argv + split + 1, env);
}

int run_in_image(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "dockvm-guest: usage: run-in-image ROOT TOOLS NAME=VALUE... -- ALTERNATIVES...\n"); return 70; }
  const char *root = argv[0], *tools = argv[1];
  int status = 0;
  /* .dockvm: where the bundled tools are mounted; with network (init wrote the guest's resolv.conf), a
   * mount point for it unless the image has one */
  static const char *points[] = { "proc", "sys", "dev", ".dockvm" };
  for (size_t i = 0; i < 4 && status == 0; i++) status = make_mount_point(root, points[i], 1);
  char etc[4200];
  snprintf(etc, sizeof etc, "%s/etc", root);
  if (status == 0 && is_file("/etc/resolv.conf", 1) && is_dir(etc)) status = make_mount_point(root, "etc/resolv.conf", 0);
  if (status == 0) status = limit_memory();
  if (status == 0) {
    fflush(stderr);
    /* like fork, but the child is PID 1 of new pid, mount, uts and ipc namespaces: when it ends, so do
     * they and every mount made in them, and this process removes the mount points it made */
    pid_t pid = (pid_t)syscall(SYS_clone, CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC | SIGCHLD, NULL, NULL, NULL, NULL);
    if (pid < 0) status = fail("make the namespaces for", root);
    else if (pid == 0) _exit(enter(root, tools, argc - 2, argv + 2));
    else {
      int wstatus, bomb = wait_guarded(pid, &wstatus, stop_namespace);
      status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
      if (bomb) fprintf(stderr, "dockvm-pids-max=%s\n", max_processes());
      report_oom();
    }
  }
  remove_mount_points();
  return status;
}
