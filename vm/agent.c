/*
 * dockvm guest agent: PID 1 of the build VM (init execs it). It speaks one framed protocol with the host
 * over a virtio-vsock stream or a virtio-serial port, runs commands (pipes or a pty), streams their
 * output, forwards signals and window sizes, moves small files, and powers the VM off.
 *
 * Frame: u32 length (big-endian; counts type + id + payload), u8 type, u32 id (big-endian), payload.
 * The same file, run on the host as `agent bridge-vsock CID PORT`, relays stdin/stdout to a guest's
 * vsock port, because Node.js cannot open AF_VSOCK sockets.
 *
 * Also run by guest.sh as `dockvm-agent upper-manifest …` (vm/upper-manifest.c) and `dockvm-agent
 * run-in-image …` (vm/run-in-image.c) and `dockvm-agent mount-root`, and by the host as `dockvm-agent
 * mount-run …` (guest.sh's mount-run without the shell).
 *
 * Built with: gcc -static -Os -o agent agent.c upper-manifest.c run-in-image.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <termios.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/capability.h>
#include <linux/loop.h>
#include <linux/random.h>
#include <time.h>
#include <linux/vm_sockets.h>
#include <grp.h>

#define PROTOCOL_VERSION 2
#define AGENT_VERSION "0.1.0"
#define SERIAL_PORT_NAME "org.dockvm.agent"
#define VSOCK_PORT 1024
#define MAX_FRAME (16u << 20)   /* bounds a frame the host may send: file puts are "small" */
#define MAX_FILE (15u << 20)
#define READ_CHUNK 65536
#define MAX_PROCS 32

enum {
  T_HELLO = 1, T_EXEC = 2, T_STDIN = 3, T_STDOUT = 4, T_STDERR = 5, T_EXIT = 6, T_SIGNAL = 7,
  T_WINSIZE = 8, T_PUT = 9, T_GET = 10, T_FILE = 11, T_OK = 12, T_ERROR = 13, T_SHUTDOWN = 14,
  T_STDIN_ACK = 15, T_BEGIN = 16,
};

struct proc {
  int used;
  uint32_t id;
  pid_t pid;
  int tty;
  int in_fd, out_fd, err_fd; /* -1 when closed; with a tty, out_fd is the pty master and in_fd == out_fd */
  char *pending; size_t pending_len; int stdin_eof;
  int exited; int status;
  int hup; /* a pty master reported EIO: the command closed its terminal; wait for the reap */
};

static struct proc procs[MAX_PROCS];
static int link_fd = -1;
static int sigchld_pipe[2];
static const char *transport_name = "serial";

extern char **environ;

static void die(const char *what) {
  fprintf(stderr, "dockvm-agent: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) { struct pollfd w = { fd, POLLOUT, 0 }; poll(&w, 1, -1); continue; }
      die("write to host");
    }
    p += n; len -= (size_t)n;
  }
}

static void put_u32(unsigned char *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static uint32_t get_u32(const unsigned char *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static uint16_t get_u16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static void send_frame(int type, uint32_t id, const void *payload, size_t len) {
  unsigned char head[9];
  put_u32(head, (uint32_t)len + 5);
  head[4] = (unsigned char)type;
  put_u32(head + 5, id);
  write_all(link_fd, head, sizeof head);
  if (len) write_all(link_fd, payload, len);
}

static void send_error(uint32_t id, const char *what, const char *path, int err) {
  char msg[4200];
  snprintf(msg, sizeof msg, "%s %s: %s", what, path, strerror(err));
  send_frame(T_ERROR, id, msg, strlen(msg));
}

/* The hello text: after a boot it is the first frame; after a restore, the answer to begin. */
static void send_hello(int type, uint32_t id) {
  struct utsname u;
  char text[512];
  uname(&u);
  snprintf(text, sizeof text, "protocol=%d\nagent=%s\nkernel=%s\ntransport=%s\n", PROTOCOL_VERSION,
           AGENT_VERSION, u.release, transport_name);
  send_frame(type, id, text, strlen(text));
}

/* ---- disks --------------------------------------------------------------------------------- */

/* The /dev node of the disk the host named NAME, into dev; 0 if there is none (yet). Disks are SCSI LUNs
 * the host hot-adds (so that a guest restored from a snapshot gets each build's own); the host gives each
 * its name as the SCSI product, which sysfs shows, space-padded, in /sys/block/sdX/device/model. */
static int disk_by_name(const char *name, char *dev, size_t size) {
  DIR *d = opendir("/sys/block");
  struct dirent *e;
  int found = 0;
  while (d && !found && (e = readdir(d))) {
    if (strncmp(e->d_name, "sd", 2) != 0) continue;
    char path[300], got[64] = "";
    snprintf(path, sizeof path, "/sys/block/%s/device/model", e->d_name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t n = read(fd, got, sizeof got - 1);
    close(fd);
    got[n > 0 ? n : 0] = 0;
    for (size_t end = strlen(got); end > 0 && (got[end - 1] == '\n' || got[end - 1] == ' '); end--) got[end - 1] = 0;
    if (strcmp(got, name) == 0) { snprintf(dev, size, "/dev/%s", e->d_name); found = access(dev, F_OK) == 0; }
  }
  if (d) closedir(d);
  return found;
}

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static struct proc *find_proc(uint32_t id) {
  for (int i = 0; i < MAX_PROCS; i++)
    if (procs[i].used && procs[i].id == id) return &procs[i];
  return NULL;
}

/* ---- exec ---------------------------------------------------------------------------------- */

/* Split `count` NUL-terminated strings off [*p, end); NULL when the payload is malformed. */
static char **take_strings(const char **p, const char *end, uint32_t count) {
  if (count > 65536) return NULL;
  char **list = calloc(count + 1, sizeof *list);
  for (uint32_t i = 0; i < count; i++) {
    const char *nul = memchr(*p, 0, (size_t)(end - *p));
    if (!nul) { free(list); return NULL; }
    list[i] = (char *)*p;
    *p = nul + 1;
  }
  return list;
}

static void do_exec(uint32_t id, const unsigned char *payload, size_t len) {
  if (len < 13) { send_frame(T_ERROR, id, "malformed exec", 14); return; }
  int tty = payload[0] & 1;
  uint16_t rows = get_u16(payload + 1), cols = get_u16(payload + 3);
  uint32_t argc = get_u32(payload + 5), envc = get_u32(payload + 9);
  const char *p = (const char *)payload + 13, *end = (const char *)payload + len;
  char **cwd = take_strings(&p, end, 1);
  char **argv = cwd ? take_strings(&p, end, argc) : NULL;
  char **envp = argv ? take_strings(&p, end, envc) : NULL;
  struct proc *slot = NULL;
  for (int i = 0; i < MAX_PROCS && !slot; i++) if (!procs[i].used) slot = &procs[i];
  if (!envp || argc == 0 || find_proc(id) || !slot) {
    const char *why = !slot ? "too many running commands" : "malformed exec";
    send_frame(T_ERROR, id, why, strlen(why));
    free(cwd); free(argv); free(envp);
    return;
  }

  int in[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 }, master = -1, status_pipe[2];
  char *slave_name = NULL;
  if (tty) {
    master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0 || grantpt(master) || unlockpt(master) || !(slave_name = ptsname(master))) {
      send_error(id, "open a pty for", argv[0], errno);
      if (master >= 0) close(master);
      free(cwd); free(argv); free(envp);
      return;
    }
    struct winsize ws = { .ws_row = rows ? rows : 24, .ws_col = cols ? cols : 80 };
    ioctl(master, TIOCSWINSZ, &ws);
  } else if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
    send_error(id, "create pipes for", argv[0], errno);
    free(cwd); free(argv); free(envp);
    return;
  }
  if (pipe2(status_pipe, O_CLOEXEC)) die("pipe");

  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    signal(SIGPIPE, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    sigset_t none; sigemptyset(&none); sigprocmask(SIG_SETMASK, &none, NULL);
    setsid(); /* own session and process group, so a signal reaches the whole command */
    if (tty) {
      int slave = open(slave_name, O_RDWR);
      if (slave < 0) goto fail;
      ioctl(slave, TIOCSCTTY, 0);
      dup2(slave, 0); dup2(slave, 1); dup2(slave, 2);
      if (slave > 2) close(slave);
    } else {
      dup2(in[0], 0); dup2(out[1], 1); dup2(err[1], 2);
    }
    if (chdir(cwd[0])) goto fail;
    environ = envp; /* execvp then searches the command's own PATH */
    execvp(argv[0], argv);
  fail:;
    int e = errno;
    write(status_pipe[1], &e, sizeof e);
    _exit(127);
  }
  close(status_pipe[1]);
  int child_errno = 0;
  ssize_t got;
  do got = read(status_pipe[0], &child_errno, sizeof child_errno); while (got < 0 && errno == EINTR);
  close(status_pipe[0]);
  if (tty) {
    /* nothing */
  } else {
    close(in[0]); close(out[1]); close(err[1]);
  }
  if (got == sizeof child_errno) {
    /* chdir or exec failed: the child is a zombie the SIGCHLD loop reaps; report the cause instead */
    char what[4200];
    snprintf(what, sizeof what, "cannot run %s in %s:", argv[0], cwd[0]);
    send_error(id, what, argv[0], child_errno);
    if (tty) close(master); else { close(in[1]); close(out[0]); close(err[0]); }
    free(cwd); free(argv); free(envp);
    return;
  }
  memset(slot, 0, sizeof *slot);
  slot->used = 1; slot->id = id; slot->pid = pid; slot->tty = tty;
  if (tty) { slot->in_fd = slot->out_fd = master; slot->err_fd = -1; set_nonblock(master); }
  else {
    slot->in_fd = in[1]; slot->out_fd = out[0]; slot->err_fd = err[0];
    set_nonblock(in[1]); set_nonblock(out[0]); set_nonblock(err[0]);
  }
  free(cwd); free(argv); free(envp);
}

/* Forward what a command wrote; returns 0 at end of stream. */
static int pump_output(struct proc *p, int fd, int type) {
  static char buf[READ_CHUNK];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) { send_frame(type, p->id, buf, (size_t)n); continue; }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return 1;
    return 0; /* EOF, or EIO from a pty master whose last slave closed */
  }
}

static void close_stdin(struct proc *p) {
  if (p->tty) return; /* the master is also the output side */
  if (p->in_fd >= 0) close(p->in_fd);
  p->in_fd = -1;
}

static void pump_stdin(struct proc *p) {
  size_t done = 0;
  while (done < p->pending_len) {
    ssize_t n = write(p->in_fd, p->pending + done, p->pending_len - done);
    if (n > 0) { done += (size_t)n; continue; }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    /* the command closed its stdin: drop what it will never read, but still acknowledge it */
    done = p->pending_len;
    close_stdin(p);
    break;
  }
  if (done) {
    unsigned char ack[4];
    put_u32(ack, (uint32_t)done);
    send_frame(T_STDIN_ACK, p->id, ack, 4);
    memmove(p->pending, p->pending + done, p->pending_len - done);
    p->pending_len -= done;
  }
  if (p->pending_len == 0 && p->stdin_eof && p->in_fd >= 0) {
    if (p->tty) { char eot = 4; write(p->in_fd, &eot, 1); p->stdin_eof = 0; }
    else close_stdin(p);
  }
}

static void finish_if_done(struct proc *p) {
  if (!p->exited) return;
  /* the command is gone: everything it wrote is in the pipe now, so drain it and report the status */
  if (p->out_fd >= 0) pump_output(p, p->out_fd, T_STDOUT);
  if (p->err_fd >= 0) pump_output(p, p->err_fd, T_STDERR);
  if (p->out_fd >= 0) close(p->out_fd);
  if (p->err_fd >= 0) close(p->err_fd);
  if (!p->tty && p->in_fd >= 0) close(p->in_fd);
  unsigned char st[8];
  int code = WIFEXITED(p->status) ? WEXITSTATUS(p->status) : -1;
  int sig = WIFSIGNALED(p->status) ? WTERMSIG(p->status) : 0;
  put_u32(st, (uint32_t)code);
  put_u32(st + 4, (uint32_t)sig);
  send_frame(T_EXIT, p->id, st, 8);
  free(p->pending);
  memset(p, 0, sizeof *p);
}

static void reap_children(void) {
  char drain[64];
  while (read(sigchld_pipe[0], drain, sizeof drain) > 0) {}
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    for (int i = 0; i < MAX_PROCS; i++) {
      if (procs[i].used && procs[i].pid == pid) {
        procs[i].exited = 1;
        procs[i].status = status;
        finish_if_done(&procs[i]);
      }
    }
    /* any other pid was an orphan re-parented to us (we are PID 1): reaping it is all it needs */
  }
}

/* ---- files --------------------------------------------------------------------------------- */

static void do_put(uint32_t id, const unsigned char *payload, size_t len) {
  const char *path = (const char *)payload + 4;
  const char *nul = len > 4 ? memchr(path, 0, len - 4) : NULL;
  if (!nul) { send_frame(T_ERROR, id, "malformed put", 13); return; }
  mode_t mode = get_u32(payload) & 07777;
  const char *data = nul + 1;
  size_t size = len - (size_t)(data - (const char *)payload);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) { send_error(id, "open", path, errno); return; }
  size_t done = 0;
  while (done < size) {
    ssize_t n = write(fd, data + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) { send_error(id, "write", path, errno); close(fd); return; }
    done += (size_t)n;
  }
  if (fchmod(fd, mode) || close(fd)) { send_error(id, "close", path, errno); return; }
  send_frame(T_OK, id, NULL, 0);
}

static void do_get(uint32_t id, const unsigned char *payload, size_t len) {
  char path[4097];
  if (len == 0 || len >= sizeof path) { send_frame(T_ERROR, id, "malformed get", 13); return; }
  memcpy(path, payload, len);
  path[len] = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) { send_error(id, "open", path, errno); return; }
  /* read to EOF rather than trusting st_size: /proc and /sys files report 0 */
  size_t cap = 65536, done = 0;
  char *buf = malloc(cap);
  for (;;) {
    if (done == cap) {
      if (cap > MAX_FILE) { close(fd); free(buf); send_error(id, "read", path, EFBIG); return; }
      cap *= 2;
      buf = realloc(buf, cap);
    }
    ssize_t n = read(fd, buf + done, cap - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) { send_error(id, "read", path, errno); close(fd); free(buf); return; }
    if (n == 0) break;
    done += (size_t)n;
  }
  close(fd);
  if (done > MAX_FILE) send_error(id, "read", path, EFBIG);
  else send_frame(T_FILE, id, buf, done);
  free(buf);
}

/* ---- begin --------------------------------------------------------------------------------- */

/* How long begin waits for the host's hot-added disks: the guest probes each on a hotplug event. */
#define DISK_WAIT_MS 20000

/* begin: u64 wall clock in ms, u16 seed length, u32 disk count, the seed, the disk names (NUL-terminated).
 * A guest restored from a snapshot has the clock and the RNG state of the moment the snapshot was saved,
 * identical in every VM restored from it: set the clock, mix the host's seed into the RNG and force a
 * reseed, so that nothing random is shared between builds; then wait for the build's disks. Answers
 * with the hello text. */
static void do_begin(uint32_t id, const unsigned char *payload, size_t len) {
  if (len < 14) { send_frame(T_ERROR, id, "malformed begin", 15); return; }
  uint64_t ms = (uint64_t)get_u32(payload) << 32 | get_u32(payload + 4);
  uint16_t seed_len = get_u16(payload + 8);
  uint32_t count = get_u32(payload + 10);
  if (seed_len > 256 || 14 + (size_t)seed_len > len) { send_frame(T_ERROR, id, "malformed begin", 15); return; }
  const char *p = (const char *)payload + 14 + seed_len, *end = (const char *)payload + len;
  char **names = take_strings(&p, end, count);
  if (!names) { send_frame(T_ERROR, id, "malformed begin", 15); return; }

  struct timespec now = { .tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000 };
  if (clock_settime(CLOCK_REALTIME, &now)) { send_error(id, "set the clock to", "the host's", errno); free(names); return; }

  struct { struct rand_pool_info info; unsigned char bytes[256]; } pool;
  pool.info.entropy_count = seed_len * 8;
  pool.info.buf_size = seed_len;
  memcpy(pool.info.buf, payload + 14, seed_len);
  int rnd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
  if (rnd < 0 || ioctl(rnd, RNDADDENTROPY, &pool.info) || ioctl(rnd, RNDRESEEDCRNG)) {
    send_error(id, "reseed", "/dev/urandom", errno);
    if (rnd >= 0) close(rnd);
    free(names);
    return;
  }
  close(rnd);

  char dev[300];
  struct timespec start, at;
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (uint32_t i = 0; i < count; i++) {
    while (!disk_by_name(names[i], dev, sizeof dev)) {
      clock_gettime(CLOCK_MONOTONIC, &at);
      if ((at.tv_sec - start.tv_sec) * 1000 + (at.tv_nsec - start.tv_nsec) / 1000000 >= DISK_WAIT_MS) {
        char msg[400];
        snprintf(msg, sizeof msg, "the disk %s did not appear in the VM within %d ms", names[i], DISK_WAIT_MS);
        send_frame(T_ERROR, id, msg, strlen(msg));
        free(names);
        return;
      }
      usleep(2000);
    }
  }
  free(names);
  send_hello(T_OK, id);
}

/* ---- dispatch ------------------------------------------------------------------------------ */

static void power_off(void) {
  sync();
  reboot(RB_POWER_OFF);
  reboot(RB_AUTOBOOT); /* QEMU runs with -no-reboot, so a reboot also ends it */
  _exit(0);
}

static void dispatch(int type, uint32_t id, const unsigned char *payload, size_t len) {
  struct proc *p;
  switch (type) {
  case T_EXEC: do_exec(id, payload, len); break;
  case T_STDIN:
    if (!(p = find_proc(id)) || p->in_fd < 0) {
      /* the command is gone or closed stdin: acknowledge so the host's window does not stall */
      unsigned char ack[4];
      put_u32(ack, (uint32_t)len);
      if (len) send_frame(T_STDIN_ACK, id, ack, 4);
      break;
    }
    if (len == 0) p->stdin_eof = 1;
    else {
      p->pending = realloc(p->pending, p->pending_len + len);
      memcpy(p->pending + p->pending_len, payload, len);
      p->pending_len += len;
    }
    pump_stdin(p);
    break;
  case T_SIGNAL:
    if ((p = find_proc(id)) && len >= 4) {
      int sig = (int)get_u32(payload);
      if (kill(-p->pid, sig)) kill(p->pid, sig);
    }
    break;
  case T_WINSIZE:
    if ((p = find_proc(id)) && p->tty && len >= 4) {
      struct winsize ws = { .ws_row = get_u16(payload), .ws_col = get_u16(payload + 2) };
      ioctl(p->out_fd, TIOCSWINSZ, &ws);
    }
    break;
  case T_PUT: do_put(id, payload, len); break;
  case T_GET: do_get(id, payload, len); break;
  case T_BEGIN: do_begin(id, payload, len); break;
  case T_SHUTDOWN:
    for (int i = 0; i < MAX_PROCS; i++) if (procs[i].used) kill(-procs[i].pid, SIGKILL);
    sync();
    send_frame(T_OK, id, NULL, 0);
    power_off();
    break;
  default: {
    char msg[64];
    snprintf(msg, sizeof msg, "unknown message type %d", type);
    send_frame(T_ERROR, id, msg, strlen(msg));
  }
  }
}

static unsigned char *inbuf;
static size_t in_len, in_cap;

static void read_link(void) {
  if (in_cap - in_len < READ_CHUNK) {
    in_cap = in_cap ? in_cap * 2 : 4 * READ_CHUNK;
    inbuf = realloc(inbuf, in_cap);
  }
  ssize_t n = read(link_fd, inbuf + in_len, in_cap - in_len);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (n <= 0) {
    /* the host went away (it closed the socket or QEMU lost it): nothing left to serve */
    power_off();
  }
  in_len += (size_t)n;
  size_t at = 0;
  while (in_len - at >= 9) {
    uint32_t flen = get_u32(inbuf + at);
    if (flen < 5 || flen > MAX_FRAME) { fprintf(stderr, "dockvm-agent: bad frame length %u\n", flen); power_off(); }
    if (in_len - at < 4 + (size_t)flen) {
      break;
    }
    dispatch(inbuf[at + 4], get_u32(inbuf + at + 5), inbuf + at + 9, flen - 5);
    at += 4 + (size_t)flen;
  }
  memmove(inbuf, inbuf + at, in_len - at);
  in_len -= at;
}

/* ---- transports ---------------------------------------------------------------------------- */

static int open_serial(void) {
  /* the port's node appears once virtio_console has probed the device; wait for it up to 10 s */
  for (int tries = 0; tries < 1000; tries++) {
    DIR *dir = opendir("/sys/class/virtio-ports");
    struct dirent *e;
    while (dir && (e = readdir(dir))) {
      if (e->d_name[0] == '.') continue;
      char path[300], name[128] = "";
      snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
      FILE *f = fopen(path, "r");
      if (!f) continue;
      if (fgets(name, sizeof name, f)) name[strcspn(name, "\n")] = 0;
      fclose(f);
      if (strcmp(name, SERIAL_PORT_NAME) == 0) {
        snprintf(path, sizeof path, "/dev/%s", e->d_name);
        int fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd >= 0) { closedir(dir); return fd; }
      }
    }
    if (dir) closedir(dir);
    usleep(10000);
  }
  errno = ENODEV;
  die("find the virtio-serial port " SERIAL_PORT_NAME);
  return -1;
}

static int open_vsock(void) {
  int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) die("vsock socket");
  struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_port = VSOCK_PORT, .svm_cid = VMADDR_CID_ANY };
  if (bind(s, (struct sockaddr *)&addr, sizeof addr) || listen(s, 1)) die("vsock listen");
  int fd;
  while ((fd = accept4(s, NULL, NULL, SOCK_CLOEXEC)) < 0) if (errno != EINTR) die("vsock accept");
  close(s);
  return fd;
}

/* Host side of vsock: connect to CID:PORT (retrying while the guest boots) and relay stdio. */
static int bridge_vsock(unsigned cid, unsigned port) {
  int s = -1;
  for (int tries = 0; tries < 3000; tries++) {
    s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) die("vsock socket");
    struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_port = port, .svm_cid = cid };
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) == 0) break;
    close(s);
    s = -1;
    usleep(10000);
  }
  if (s < 0) die("vsock connect");
  char buf[READ_CHUNK];
  struct pollfd fds[2] = { { 0, POLLIN, 0 }, { s, POLLIN, 0 } };
  for (;;) {
    if (poll(fds, 2, -1) < 0) { if (errno == EINTR) continue; die("poll"); }
    for (int i = 0; i < 2; i++) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return 0;
      link_fd = i == 0 ? s : 1;
      write_all(link_fd, buf, (size_t)n);
    }
  }
}

static void on_sigchld(int sig) {
  (void)sig;
  int saved = errno;
  write(sigchld_pipe[1], "c", 1);
  errno = saved;
}

static int cmdline_has(const char *word) {
  char buf[4096] = "";
  int fd = open("/proc/cmdline", O_RDONLY);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  for (char *tok = strtok(buf, " \n"); tok; tok = strtok(NULL, " \n"))
    if (strcmp(tok, word) == 0) return 1;
  return 0;
}

/* `agent insmod FILE...`: load kernel modules in one process (init would fork busybox once per module,
 * and every fork+exec costs real time under TCG). A module already loaded counts as loaded. */
static int insmod_all(int count, char **files) {
  int failed = 0;
  for (int i = 0; i < count; i++) {
    int fd = open(files[i], O_RDONLY | O_CLOEXEC);
    if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)) {
      fprintf(stderr, "dockvm-agent: insmod %s: %s\n", files[i], strerror(errno));
      failed = 1;
    }
    if (fd >= 0) close(fd);
  }
  return failed;
}

/* ---- mount-lowers -------------------------------------------------------------------------- */

/* A loop device over SIZE bytes at OFFSET of the open disk `backing`, read-only: its open fd (-1 on
 * error), to be closed once mounted (AUTOCLEAR: it goes away with its last user, which is then the
 * mount). Direct I/O: the disk's blocks are not cached twice, once for the disk and once for the loop
 * device (measured here under TCG: reading 30 MB of files through it took 15 % less time). */
static int loop_over(int control, int backing, unsigned long long offset, unsigned long long size, char *dev, size_t dev_size) {
  int n = ioctl(control, LOOP_CTL_GET_FREE);
  if (n < 0) return -1;
  snprintf(dev, dev_size, "/dev/loop%d", n);
  int fd = open(dev, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  struct loop_config config = { .fd = (unsigned)backing };
  config.info.lo_offset = offset;
  config.info.lo_sizelimit = size;
  config.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
  if (ioctl(fd, LOOP_CONFIGURE, &config)) {
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
  }
  return fd;
}

/* `agent mount-lowers DIR FSTYPE:SERIAL[@OFFSET+SIZE]...`: mount lower i read-only at DIR/i, all from one
 * process (a `mount` per lower from guest.sh would fork+exec busybox once each: seconds for a hundred
 * layers under TCG). SERIAL is the name of a disk (disk_by_name); with @OFFSET+SIZE the lower is that
 * byte range of it, through a loop device: many layer images share one disk. */
static int mount_lowers(const char *dir, int count, char **specs) {
  int control = -1, backing = -1;
  char serial[64], last_serial[64] = "", disk[300] = "";
  if (mkdir(dir, 0755) && errno != EEXIST) { fprintf(stderr, "dockvm-agent: mkdir %s: %s\n", dir, strerror(errno)); return 1; }
  for (int i = 0; i < count; i++) {
    char fstype[32], dev[300], target[4200], extra;
    unsigned long long offset = 0, size = 0;
    const char *colon = strchr(specs[i], ':');
    const char *at = colon ? strchr(colon, '@') : NULL;
    size_t type_len = colon ? (size_t)(colon - specs[i]) : 0;
    size_t serial_len = colon ? (at ? (size_t)(at - colon - 1) : strlen(colon + 1)) : 0;
    if (!colon || type_len == 0 || type_len >= sizeof fstype || serial_len == 0 || serial_len >= sizeof serial ||
        (at && sscanf(at, "@%llu+%llu%c", &offset, &size, &extra) != 2)) {
      fprintf(stderr, "dockvm-agent: mount-lowers: bad lower %s (want FSTYPE:SERIAL or FSTYPE:SERIAL@OFFSET+SIZE)\n", specs[i]);
      return 2;
    }
    memcpy(fstype, specs[i], type_len);
    fstype[type_len] = 0;
    memcpy(serial, colon + 1, serial_len);
    serial[serial_len] = 0;
    if (strcmp(serial, last_serial) != 0) {
      /* lowers sharing a disk come one after another: look each disk up once */
      if (!disk_by_name(serial, disk, sizeof disk)) { fprintf(stderr, "dockvm-agent: lower %d (%s): no disk named %s\n", i, specs[i], serial); return 1; }
      snprintf(last_serial, sizeof last_serial, "%s", serial);
      if (backing >= 0) close(backing);
      backing = -1;
    }
    snprintf(dev, sizeof dev, "%s", disk);
    int loop = -1;
    if (at) {
      if (backing < 0) backing = open(disk, O_RDONLY | O_CLOEXEC);
      if (control < 0) control = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
      if (backing < 0 || control < 0 || (loop = loop_over(control, backing, offset, size, dev, sizeof dev)) < 0) {
        fprintf(stderr, "dockvm-agent: lower %d (%s): a loop device over %s: %s\n", i, specs[i], disk, strerror(errno));
        return 1;
      }
    }
    snprintf(target, sizeof target, "%s/%d", dir, i);
    if ((mkdir(target, 0755) && errno != EEXIST) || mount(dev, target, fstype, MS_RDONLY, NULL)) {
      fprintf(stderr, "dockvm-agent: lower %d (%s): mount %s on %s: %s\n", i, specs[i], dev, target, strerror(errno));
      return 1;
    }
    if (loop >= 0) close(loop);
  }
  return 0;
}

/* ---- mount-root, mount-run ------------------------------------------------------------------ */

/* guest.sh's paths (B, R, L, TOOLS) and the line its mount-run ends stderr with when a mount fails */
#define BUILD_DIR "/build"
#define ROOT_DIR BUILD_DIR "/root"
#define SCRATCH_DIR BUILD_DIR "/scratch"
#define LOWERS_DIR "/l"
#define TOOLS_DIR "/usr/lib/dockvm/shell"
#define MOUNT_FAILED "dockvm-guest: the mount step failed"
#define MAX_LOWER_SPECS 128 /* the host's MAX_LOWERS (src/build/build-vm.ts) */

int run_in_image(int argc, char **argv); /* vm/run-in-image.c */

static int make_dir(const char *path) {
  if (mkdir(path, 0755) == 0 || errno == EEXIST) return 0;
  fprintf(stderr, "dockvm-agent: mkdir %s: %s\n", path, strerror(errno));
  return -1;
}

static int mount_or_say(const char *what, const char *target, const char *type, unsigned long flags, const char *options) {
  if (mount(what, target, type, flags, options) == 0) return 0;
  fprintf(stderr, "dockvm-agent: mount %s on %s: %s\n", what, target, strerror(errno));
  return -1;
}

/*
 * `agent mount-root` (guest.sh's step_mount, and mount-run's first half): the lowers (DOCKVM_LOWERS:
 * FSTYPE:SERIAL per lower, bottom first, or FSTYPE:SERIAL@OFFSET+SIZE for lowers that share a disk) at
 * LOWERS_DIR/i, and the overlay of them at ROOT_DIR: over the ext4 scratch disk (DOCKVM_SCRATCH) as its
 * upper, or read-only without one (export). One process, where a shell cost a fork for each mount and
 * mkdir (10-40 ms each under TCG).
 */
static int mount_root(void) {
  const char *scratch = getenv("DOCKVM_SCRATCH");
  char *lowers = strdup(getenv("DOCKVM_LOWERS") ? getenv("DOCKVM_LOWERS") : "");
  char *specs[MAX_LOWER_SPECS], *save = NULL, dev[300];
  int count = 0;
  for (char *spec = strtok_r(lowers, " ", &save); spec; spec = strtok_r(NULL, " ", &save)) {
    if (count == MAX_LOWER_SPECS) { fprintf(stderr, "dockvm-agent: mount-root: over %d lowers\n", MAX_LOWER_SPECS); return -1; }
    specs[count++] = spec;
  }
  if (make_dir(BUILD_DIR) || make_dir(ROOT_DIR) || make_dir(SCRATCH_DIR)) return -1;
  if (count > 0 && mount_lowers(LOWERS_DIR, count, specs)) return -1;
  /* top first, as overlayfs wants them; FROM scratch gets an empty lower */
  static char options[8192];
  size_t used = (size_t)snprintf(options, sizeof options, "lowerdir=");
  for (int i = count - 1; i >= 0; i--) used += (size_t)snprintf(options + used, sizeof options - used, "%s" LOWERS_DIR "/%d", i == count - 1 ? "" : ":", i);
  if (count == 0) {
    if (make_dir(BUILD_DIR "/empty")) return -1;
    used += (size_t)snprintf(options + used, sizeof options - used, BUILD_DIR "/empty");
  }
  if (scratch && *scratch) {
    if (!disk_by_name(scratch, dev, sizeof dev)) { fprintf(stderr, "dockvm-guest: no disk named %s\n", scratch); return -1; }
    if (mount_or_say(dev, SCRATCH_DIR, "ext4", MS_NOATIME, NULL) || make_dir(SCRATCH_DIR "/upper") || make_dir(SCRATCH_DIR "/work")) return -1;
    /* Off: redirect_dir and metacopy (their xattrs have no OCI form), index and xino (not needed for a
     * throwaway mount). A renamed lower directory is then copied up whole, which OCI can express. */
    used += (size_t)snprintf(options + used, sizeof options - used,
                             ",upperdir=" SCRATCH_DIR "/upper,workdir=" SCRATCH_DIR "/work,redirect_dir=off,index=off,metacopy=off,xino=off");
  } else {
    /* overlayfs wants at least two lowers without an upper; an empty one at the bottom changes nothing
     * the merged view shows below its root */
    if (make_dir(BUILD_DIR "/bottom")) return -1;
    used += (size_t)snprintf(options + used, sizeof options - used, ":" BUILD_DIR "/bottom");
  }
  if (used >= sizeof options) { fprintf(stderr, "dockvm-agent: mount-root: the overlay's options are too long\n"); return -1; }
  return mount_or_say("overlay", ROOT_DIR, "overlay", scratch && *scratch ? 0 : MS_RDONLY, options);
}

/* `agent mount-run NAME=VALUE... -- ALTERNATIVES...`: guest.sh's mount-run (dockvm shell -- CMD)
 * without the shell: mount-root, then run-in-image's run, in this process, where guest.sh cost an exec
 * of sh and the parse of the script as well. */
static int mount_run(int argc, char **argv) {
  if (mount_root()) { fprintf(stderr, MOUNT_FAILED "\n"); return 70; }
  char **args = calloc((size_t)argc + 3, sizeof *args);
  args[0] = ROOT_DIR;
  args[1] = TOOLS_DIR;
  for (int i = 0; i < argc; i++) args[i + 2] = argv[i];
  return run_in_image(argc + 2, args);
}

int upper_manifest(int argc, char **argv); /* vm/upper-manifest.c */
int pids_guard(int argc, char **argv); /* vm/run-in-image.c */

/* Docker's default capabilities (moby's oci/caps/defaults.go, containerd's the same), what a RUN keeps. */
static const int DOCKER_CAPS[] = {
  CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FSETID, CAP_FOWNER, CAP_MKNOD, CAP_NET_RAW, CAP_SETGID, CAP_SETUID,
  CAP_SETFCAP, CAP_SETPCAP, CAP_NET_BIND_SERVICE, CAP_SYS_CHROOT, CAP_KILL, CAP_AUDIT_WRITE,
};

/* Every other capability out of the bounding set: the command's root then has only Docker's (exec gives
 * root what the bounding set holds), and no program it runs gets another back, setuid or file caps. */
static int drop_to_docker_caps(void) {
  for (int cap = 0; prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; cap++) {
    int keep = 0;
    for (size_t i = 0; i < sizeof DOCKER_CAPS / sizeof DOCKER_CAPS[0]; i++) keep |= DOCKER_CAPS[i] == cap;
    if (!keep && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) return -1;
  }
  return 0;
}

/* `agent as-user UID GID GROUPS DIR COMMAND...`: become a Containerfile RUN step's process. Run chrooted
 * (the agent is static, so it works in any image): keep Docker's default capabilities only, set the
 * supplementary groups (GROUPS: comma-separated gids, "-" for none), the gid and the uid (guest.sh resolved
 * USER's names in the image's /etc/passwd and /etc/group), change to DIR, and exec COMMAND found on the
 * PATH of the environment, as Docker does. Exits 127 when COMMAND cannot be run, 126 when it is not
 * executable, as a shell would. */
static int as_user(int argc, char **argv) {
  if (argc < 5) { fprintf(stderr, "dockvm-agent: usage: as-user UID GID GROUPS DIR COMMAND...\n"); return 125; }
  if (drop_to_docker_caps() != 0) {
    fprintf(stderr, "dockvm: cannot drop to Docker's default capabilities: %s\n", strerror(errno));
    return 125;
  }
  uid_t uid = (uid_t)strtoul(argv[0], NULL, 10);
  gid_t gid = (gid_t)strtoul(argv[1], NULL, 10);
  gid_t groups[256];
  size_t count = 0;
  if (strcmp(argv[2], "-") != 0) {
    for (char *p = argv[2]; *p && count < 256;) {
      groups[count++] = (gid_t)strtoul(p, &p, 10);
      if (*p == ',') p++;
    }
  }
  if (setgroups(count, groups) != 0 || setgid(gid) != 0 || setuid(uid) != 0) {
    fprintf(stderr, "dockvm: cannot become user %u:%u: %s\n", (unsigned)uid, (unsigned)gid, strerror(errno));
    return 125;
  }
  if (chdir(argv[3]) != 0) {
    fprintf(stderr, "dockvm: cannot change to the working directory %s: %s\n", argv[3], strerror(errno));
    return 125;
  }
  execvp(argv[4], argv + 4);
  int code = errno == ENOENT ? 127 : 126;
  fprintf(stderr, "dockvm: cannot run %s: %s\n", argv[4], strerror(errno));
  return code;
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "insmod") == 0) return insmod_all(argc - 2, argv + 2);
  if (argc >= 2 && strcmp(argv[1], "as-user") == 0) return as_user(argc - 2, argv + 2);
  if (argc >= 3 && strcmp(argv[1], "mount-lowers") == 0) return mount_lowers(argv[2], argc - 3, argv + 3);
  if (argc >= 2 && strcmp(argv[1], "upper-manifest") == 0) return upper_manifest(argc - 2, argv + 2);
  if (argc >= 2 && strcmp(argv[1], "run-in-image") == 0) return run_in_image(argc - 2, argv + 2);
  if (argc == 2 && strcmp(argv[1], "mount-root") == 0) return mount_root() ? 70 : 0;
  if (argc >= 3 && strcmp(argv[1], "mount-run") == 0) return mount_run(argc - 2, argv + 2);
  if (argc >= 2 && strcmp(argv[1], "pids-guard") == 0) return pids_guard(argc - 2, argv + 2);
  if (argc == 4 && strcmp(argv[1], "bridge-vsock") == 0)
    return bridge_vsock((unsigned)strtoul(argv[2], NULL, 10), (unsigned)strtoul(argv[3], NULL, 10));

  signal(SIGPIPE, SIG_IGN);
  if (pipe2(sigchld_pipe, O_CLOEXEC | O_NONBLOCK)) die("pipe");
  struct sigaction sa = { .sa_handler = on_sigchld, .sa_flags = SA_RESTART | SA_NOCLDSTOP };
  sigaction(SIGCHLD, &sa, NULL);

  if (cmdline_has("dockvm.transport=vsock")) { transport_name = "vsock"; link_fd = open_vsock(); }
  else link_fd = open_serial();
  send_hello(T_HELLO, 0);

  for (;;) {
    struct pollfd fds[2 + 3 * MAX_PROCS];
    struct { struct proc *p; int role; } who[2 + 3 * MAX_PROCS];
    int n = 0;
    fds[n] = (struct pollfd){ link_fd, POLLIN, 0 }; who[n].p = NULL; who[n++].role = 0;
    fds[n] = (struct pollfd){ sigchld_pipe[0], POLLIN, 0 }; who[n].p = NULL; who[n++].role = 1;
    for (int i = 0; i < MAX_PROCS; i++) {
      struct proc *p = &procs[i];
      if (!p->used || p->exited) continue;
      if (p->out_fd >= 0 && !p->hup) { fds[n] = (struct pollfd){ p->out_fd, POLLIN, 0 }; who[n].p = p; who[n++].role = T_STDOUT; }
      if (p->err_fd >= 0) { fds[n] = (struct pollfd){ p->err_fd, POLLIN, 0 }; who[n].p = p; who[n++].role = T_STDERR; }
      if (p->in_fd >= 0 && (p->pending_len || p->stdin_eof)) {
        fds[n] = (struct pollfd){ p->in_fd, POLLOUT, 0 }; who[n].p = p; who[n++].role = T_STDIN;
      }
    }
    if (poll(fds, (nfds_t)n, -1) < 0) { if (errno == EINTR) continue; die("poll"); }
    for (int i = 0; i < n; i++) {
      if (!fds[i].revents) continue;
      struct proc *p = who[i].p;
      if (who[i].role == 0) read_link();
      else if (who[i].role == 1) reap_children();
      else if (!p->used || p->exited) continue;
      else if (who[i].role == T_STDIN) pump_stdin(p);
      else {
        int *fd = who[i].role == T_STDOUT ? &p->out_fd : &p->err_fd;
        if (*fd != fds[i].fd) continue;
        if (!pump_output(p, *fd, who[i].role)) {
          /* a pty master reports EIO as soon as the command exits; keep it until the exit is reaped */
          if (p->tty) { p->hup = 1; continue; }
          close(*fd);
          *fd = -1;
        }
      }
    }
  }
}
