# dockvm's guest side of run-as-root and export-in-VM. The host runs it with the agent's exec, one step
# at a time, as: sh -c "$(cat guest.sh)" dockvm-guest STEP [ARGS…], with parameters in DOCKVM_* variables.
# Disks are found by the name the host gave them (the SCSI product of each hot-added LUN, which sysfs
# shows as the disk's model), never by /dev/sdX order (the guest names disks as it probes them).
#
#   mount   lowers (read-only images, bottom first: squashfs, or ext4 for layers with POSIX ACLs) + ext4
#           scratch → overlay at /build/root; unpack copyToRoot
#   run     a command the host chose (the runAsRoot script with its interpreter, a shell, a command),
#           chrooted in fresh mount/pid/uts/ipc namespaces, /proc /dev /sys and the bundled tools mounted
#   mount-run  mount, then run (dockvm shell -- CMD)
#   extra   unmount the overlay; extraCommands (bash) in the upper directory (the new layer's root)
#   pack    the upper directory described onto the output disk (a manifest, or a tar); prints its size
#   newdirs the upper's directories the lowers lack (NUL-separated)
#   merged  (export) the merged view of the lowers as a tar onto the output disk
#   fill-lower  the lower of a layer with POSIX ACLs (which squashfs cannot hold): the layer in overlay
#           form (the copy disk) unpacked onto an empty ext4 disk (the out disk), which the host caches
#   unpack-reference  (benchmark only) the nixpkgs way instead of mount: layer tars unpacked in the guest
#
# Plans (src/executor/): a stage's layer steps in one boot, each step's changes its own layer; spec.json's
# one step is stage-mount (copyToRoot unpacked), run, extra, commit.
#   stage-mount  step_mount, then the tools the steps run chrooted (/.dockvm: busybox, the agent, GNU tar)
#   run-step     a RUN: argv as planned, its env, user, workdir, mounts and network, chrooted
#   copy-step    a COPY/ADD: a tar from the inputs disk unpacked at its destination, by Docker's rules
#   workdir-step WORKDIR: the directory made, owned by the USER
#   secret       stdin → a file on a tmpfs, for the next RUN, which mounts it (never on a disk; the
#                run-step removes it when it ends)
#   commit       the step's upper packed onto the output disk at the next free MiB, then made a lower
#   cache-save   after the last step: cache mount directories as tars onto the output disk, for the host to keep
set -eu

B=/build
R=$B/root
GNU_TAR=/usr/lib/dockvm/tar  # put there by src/vm/guest-tools.ts
TOOLS=/usr/lib/dockvm/shell  # the bundled bash and busybox (src/vm/guest-tools.ts), /.dockvm in the image
# The xattrs of a layer include trusted.overlay.* (whiteout bookkeeping the host converts) and
# security.capability (setcap); GNU tar stores only user.* unless told.
TAR_XATTRS="--xattrs --xattrs-include=*"

die() { echo "dockvm-guest: $*" >&2; exit 70; }

# The disk named $1, into $dev: `disk_dev NAME` costs no subshell (a fork, 10-40 ms under TCG), where
# `$(disk NAME)` does.
disk_dev() {
  for d in /sys/block/sd*; do
    # read, not cat: a fork costs ~10 ms under TCG; read also drops the model's padding spaces
    model=""
    read -r model < "$d/device/model" 2>/dev/null || true
    if [ "$model" = "$1" ]; then dev="/dev/${d##*/}"; return 0; fi
  done
  die "no disk named $1"
}

disk() { disk_dev "$1" && echo "$dev"; }

# The lowers' mount points, /l/0 (the bottom layer) upwards: short names, so that the lowerdir option
# of 128 of them (785 bytes) stays far inside the one page a mount's options may take.
L=/l

# The mounted lowers, top first, as overlayfs' lowerdir wants them.
lowerdir_list() {
  list=""
  i=0
  for _ in ${DOCKVM_LOWERS:-}; do
    list="$L/$i${list:+:$list}"
    i=$((i + 1))
  done
  echo "$list"
}

step_mount() {
  # the lowers, the scratch disk and the overlay at $R: one process (vm/agent.c), not a fork per mount
  /bin/dockvm-agent mount-root
  # the overlay's lowerdir, top first (step_stage_mount keeps it): lowerdir_list without its subshell
  lowerdirs=""
  i=0
  for _ in ${DOCKVM_LOWERS:-}; do
    lowerdirs="$L/$i${lowerdirs:+:$lowerdirs}"
    i=$((i + 1))
  done
  [ -n "$lowerdirs" ] || lowerdirs=$B/empty
  if [ -n "${DOCKVM_SCRATCH:-}" ] && [ -n "${DOCKVM_COPY:-}" ]; then
    keep=""
    [ "${DOCKVM_KEEP_DIRLINKS:-0}" = 1 ] && keep=--keep-directory-symlink
    # shellcheck disable=SC2086
    disk_dev "$DOCKVM_COPY"
    "$GNU_TAR" -C $R $TAR_XATTRS --same-owner --numeric-owner --same-permissions $keep -xf "$dev"
  fi
}

# Mount points this run creates and the base lacks are removed afterwards: they must leave no trace.
make_mount_point() {
  if [ ! -e "$R/$1" ] && [ ! -L "$R/$1" ]; then
    mkdir "$R/$1"
    echo "$1" >> $B/created
  fi
}

# The script runs in a memory cgroup a little smaller than the VM: a script that wants more memory than
# the VM has is OOM-killed at once, instead of the whole guest thrashing (no swap: it would evict the
# code pages of every process and crawl under TCG). The kill is reported for the host to explain.
CG=/sys/fs/cgroup
limit_memory() {
  # $CG/script itself vm/init made, before the VM was saved
  while read -r name kib _; do
    case $name in MemTotal:) total_kib=$kib ;; MemAvailable:) available_kib=$kib; break ;; esac
  done < /proc/meminfo
  # Headroom for the agent, the kernel and the page cache of the lowers: a quarter of the VM, at least
  # 48 MiB (with less, squashfs reads under pressure crawl before the cgroup ever OOMs); and never more
  # than what is available now less 24 MiB, which the kernel's own work under pressure needs (a small VM
  # has little beyond the headroom). The same rule as vm/run-in-image.c.
  headroom=$((total_kib / 4))
  [ $headroom -ge 49152 ] || headroom=49152
  limit=$((total_kib - headroom))
  [ $limit -le $((available_kib - 24576)) ] || limit=$((available_kib - 24576))
  [ $limit -ge 16384 ] || limit=16384
  echo $((limit * 1024)) > $CG/script/memory.max
  # and its processes, as vm/run-in-image.c does: one per 2 MiB of memory, or DOCKVM_MAX_PROCESSES; the
  # step enters the cgroup through `dockvm-agent pids-guard`, which stops a fork bomb at the limit
  max=$((total_kib / 2048))
  [ $max -ge 64 ] || max=64
  echo "${DOCKVM_MAX_PROCESSES:-$max}" > $CG/script/pids.max
}

report_oom() {
  kills=$(sed -n 's/^oom_kill \([0-9]*\)/\1/p' $CG/script/memory.events 2>/dev/null || echo 0)
  [ "${kills:-0}" = 0 ] || echo "dockvm-oom-kills=$kills" >&2
}

# The command's environment and what runs come as arguments (NAME=VALUE… -- ALTERNATIVES…, see the
# launcher in vm/run-in-image.c);
# a script to run (DOCKVM_SCRIPT) is written to /dev/pipes/$DOCKVM_SCRIPT_NAME, on the /dev of this run.
# Chrooted in fresh mount/pid/uts/ipc namespaces with /proc /sys /dev and the bundled tools (/.dockvm)
# mounted, in the memory and pids cgroup limit_memory describes, mount points the image lacks made and removed
# again, OOM kills reported: all in one process (vm/run-in-image.c), where this shell took ~25 forks.
# exec: the last thing the step does, and a fork less (10-50 ms under TCG).
step_run() {
  exec /bin/dockvm-agent run-in-image "$R" "$TOOLS" "$@"
}

# mount, then run, in one exec, for a build that has copyToRoot to unpack (without, the host runs the
# agent's own mount-run: vm/agent.c). A mount that fails ends stderr with MOUNT_FAILED, so that the host
# tells it from the command's own failure.
MOUNT_FAILED="dockvm-guest: the mount step failed"
step_mount_run() {
  trap 'echo "$MOUNT_FAILED" >&2' EXIT
  step_mount
  trap - EXIT
  step_run "$@"
}

step_extra() {
  umount $R
  cd $B/scratch/upper
  # bash, as nixpkgs runs extraCommands
  "$TOOLS/bash" -e -c "$DOCKVM_EXTRA" extraCommands
}

pack() {
  out=$(disk "$DOCKVM_OUT")
  # --totals prints the archive's size; the host reads exactly that many bytes of the output disk.
  "$GNU_TAR" -C "$1" $TAR_XATTRS --numeric-owner --format=posix --pax-option=delete=atime,delete=ctime \
    --totals -cf "$out" . 2> $B/tar.err || { cat $B/tar.err >&2; exit 71; }
  bytes=$(sed -n 's/^Total bytes written: \([0-9]*\).*/\1/p' $B/tar.err)
  echo "dockvm-tar-bytes=$bytes"
}

# The upper described for the host to write the layer from: a manifest of its metadata and of where each
# file's bytes lie on the scratch disk (the host reads them from the disk's image, so they do not pass
# through the emulator again; vm/upper-manifest.c). DOCKVM_PACK=tar: a GNU tar archive of it instead (the
# old way); DOCKVM_PACK=inline: the manifest with every file's bytes in it, as it holds those of a file
# whose extents cannot be given. Both are there for tests to compare against.
step_pack() {
  if grep -q " $R " /proc/mounts; then umount $R; fi
  case "${DOCKVM_PACK:-extents}" in
    tar)
      echo "dockvm-upper-kib=$(du -sk $B/scratch/upper | cut -f1)"
      pack $B/scratch/upper ;;
    inline) /bin/dockvm-agent upper-manifest $B/scratch/upper "$(disk "$DOCKVM_OUT")" /dev/null ;;
    *) /bin/dockvm-agent upper-manifest $B/scratch/upper "$(disk "$DOCKVM_OUT")" "$(disk "$DOCKVM_SCRATCH")" ;;
  esac
}

step_merged() {
  pack $R
}

# The upper's directories that the lowers lack, NUL-separated on stdout: an opaque xattr on one of them
# means nothing, and the host drops it instead of writing a .wh..wh..opq marker.
step_newdirs() {
  cd $B/scratch/upper
  if [ -z "$(lowerdir_list)" ]; then
    find . -mindepth 1 -type d -exec sh -c 'for d; do printf "%s\0" "${d#./}"; done' dockvm-newdirs {} +
    return 0
  fi
  mkdir -p $B/lowers $B/empty
  # A read-only overlay of the lowers alone (the empty lower makes at least two, as overlayfs wants).
  mount -t overlay overlay -o "ro,lowerdir=$(lowerdir_list):$B/empty" $B/lowers
  cd $B/scratch/upper
  find . -mindepth 1 -type d -exec sh -c 'for d; do [ -d "/build/lowers/$d" ] || printf "%s\0" "${d#./}"; done' dockvm-newdirs {} +
  umount $B/lowers
}

step_fill_lower() {
  mkdir -p $B/fill
  mount -t ext4 -o noatime "$(disk "$DOCKVM_OUT")" $B/fill
  rmdir $B/fill/lost+found
  # GNU tar only warns when the kernel refuses an xattr (a malformed ACL, an ACL on a symlink): the
  # lower would silently lack it, so any message fails the step.
  # shellcheck disable=SC2086
  "$GNU_TAR" -C $B/fill $TAR_XATTRS --same-owner --numeric-owner --same-permissions -xf "$(disk "$DOCKVM_COPY")" 2> $B/fill.err ||
    { cat $B/fill.err >&2; exit 71; }
  if [ -s $B/fill.err ]; then cat $B/fill.err >&2; exit 71; fi
  umount $B/fill
}

# For scripts/bench-run-as-root.ts only, the reference dockvm is measured against: what nixpkgs'
# runWithOverlay does instead of step_mount. Each base layer tar (read from a raw disk: DOCKVM_REF_LAYERS
# lists SERIAL:OFFSET:SIZE, bottom first) is unpacked into its own directory on the scratch disk, its
# whiteouts turned into 0/0 devices (opaque markers are left as nixpkgs leaves them: the benchmark's
# bases have none), and those directories become the lowers of the same overlay step_mount makes.
step_unpack_reference() {
  mkdir -p $R $B/scratch
  mount -t ext4 -o noatime "$(disk "$DOCKVM_SCRATCH")" $B/scratch
  mkdir -p $B/scratch/upper $B/scratch/work
  lowerdirs=""
  i=0
  for layer in ${DOCKVM_REF_LAYERS:-}; do
    serial=${layer%%:*}
    offset=${layer#*:}
    size=${offset#*:}
    offset=${offset%%:*}
    dir=$B/scratch/layers/$i
    mkdir -p $dir
    dd if="$(disk "$serial")" bs=1M iflag=skip_bytes,count_bytes skip="$offset" count="$size" 2>/dev/null |
      "$GNU_TAR" -C $dir $TAR_XATTRS --same-owner --numeric-owner --same-permissions -xf -
    find $dir -name '.wh.*' ! -name '.wh..wh..opq' -exec sh -c 'for w; do
      rm "$w"; mknod "${w%/*}/${w##*/.wh.}" c 0 0; done' dockvm-whiteouts {} +
    lowerdirs="$dir${lowerdirs:+:$lowerdirs}"
    i=$((i + 1))
  done
  [ -n "$lowerdirs" ] || die "unpack-reference: no layers in DOCKVM_REF_LAYERS"
  mount -t overlay overlay \
    -o "lowerdir=$lowerdirs,upperdir=$B/scratch/upper,workdir=$B/scratch/work,redirect_dir=off,index=off,metacopy=off,xino=off" $R
}

# --- Containerfile steps (src/executor/stage-vm.ts) ---------------------------------------------------
# State of the stage in $S: the lowerdir list (top first) and how many layers were committed; the
# committed uppers live in $B/scratch/layers/N and are lowers of the steps after them (overlayfs reads an
# old upperdir's whiteout devices and opaque xattrs as a lower's).
S=$B/stage
T=/run/dockvm-tools

step_stage_mount() {
  step_mount
  mkdir -p $S $B/scratch/layers $B/empty
  # step_mount's lowerdirs: the lowers, top first, or the empty one (lowerdir_list costs a subshell)
  echo "$lowerdirs" > $S/lowers
  echo 0 > $S/count
  echo 0 > $S/offset
  # The tools a chrooted step needs, whatever the image has: static busybox and agent; GNU tar with its
  # libraries, run through their own loader (the image's /lib may hold another libc, or none).
  # DOCKVM_STAGE_TOOLS=0 (spec.json's step, whose script gets the bundled shell at /.dockvm): none, and
  # all of a small VM's memory stays the script's (/run is RAM).
  [ "${DOCKVM_STAGE_TOOLS:-1}" = 1 ] || return 0
  mkdir -p $T/lib
  cp /bin/busybox /bin/dockvm-agent $T/
  cp "$GNU_TAR" $T/tar
  for f in /lib64/ld-linux* /lib/ld-linux* /lib/*-linux-gnu/*; do [ -f "$f" ] && cp -L "$f" $T/lib/; done
  ls $T/lib/ld-linux* > /dev/null 2>&1 || die "no dynamic loader for GNU tar in the guest"
}

# In the image (chrooted): busybox applets, and GNU tar through its loader.
in_image() { chroot $R /.dockvm/busybox "$@"; }
image_tar() {
  loader=$(cd $T/lib && echo ld-linux*)
  chroot $R "/.dockvm/lib/$loader" --library-path /.dockvm/lib /.dockvm/tar "$@"
}

# /.dockvm in the image for one step: a mount point that leaves no trace (make_mount_point records it).
mount_tools() {
  make_mount_point .dockvm
  mount --bind $T $R/.dockvm
}

# Mount points and directories made only for this step, deepest first (recorded relative to $R).
remove_created() {
  sort -r $B/created | while read -r d; do
    if [ -d "$R/$d" ] && [ ! -L "$R/$d" ]; then rmdir "$R/$d" 2>/dev/null || true; else rm -f "$R/$d"; fi
  done
}

unmount_tools() {
  umount $R/.dockvm
}

# USER as Docker (runc's GetExecUser) resolves it in the image's /etc/passwd and /etc/group, printed as
# "UID GID GROUPS HOME" (GROUPS: comma-separated supplementary gids, "-" for none). A name that is not
# there is an error; a number need not be there. Supplementary groups only when no group is given.
resolve_user() {
  spec=$1
  [ -n "$spec" ] || spec=0:0
  user=${spec%%:*}
  group=""
  case "$spec" in *:*) group=${spec#*:} ;; esac
  awk -v user="$user" -v group="$group" -v pw="$R/etc/passwd" -v gr="$R/etc/group" '
    BEGIN {
      FS = ":"
      nu = (user ~ /^[0-9]+$/); ng = (group ~ /^[0-9]+$/)
      uid = ""; gid = 0; home = "/"; name = ""
      while ((getline line < pw) > 0) {
        split(line, f, ":")
        if ((nu && f[3] == user) || (!nu && f[1] == user)) { uid = f[3]; gid = f[4]; home = f[6]; name = f[1]; break }
      }
      if (uid == "") {
        if (!nu) { print "unable to find user " user ": no matching entries in passwd file" > "/dev/stderr"; exit 1 }
        uid = user
      }
      sgids = ""; found = ""
      if (group != "" || name != "") {
        while ((getline line < gr) > 0) {
          split(line, g, ":")
          if (group == "") {
            n = split(g[4], members, ",")
            for (i = 1; i <= n; i++) if (members[i] == name) sgids = sgids (sgids == "" ? "" : ",") g[3]
          } else if ((ng && g[3] == group) || (!ng && g[1] == group)) { found = g[3]; break }
        }
        if (group != "") {
          if (found == "") {
            if (!ng) { print "unable to find group " group ": no matching entries in group file" > "/dev/stderr"; exit 1 }
            found = group
          }
          gid = found
        }
      }
      if (home == "") home = "/"
      print uid, gid, (sgids == "" ? "-" : sgids), home
    }'
}

# COPY --chown's ids: as Docker documents it, a user without a group means the same number as gid.
resolve_owner() {
  case "$1" in
    *:*) resolve_user "$1" ;;
    *)
      ids=$(resolve_user "$1") || return 1
      # shellcheck disable=SC2086
      set -- $ids
      echo "$1 $1 - $4" ;;
  esac
}

# mkdir -p in the image (symlinks followed there), each directory it makes owned by $2:$3, 0755; the
# ones it made are printed, one a line, as the image sees them.
make_dirs_in_image() {
  in_image sh -c '
    umask 022
    d=""
    IFS=/
    for part in $1; do
      [ -n "$part" ] || continue
      d="$d/$part"
      [ -d "$d" ] && continue
      /.dockvm/busybox mkdir "$d" && /.dockvm/busybox chown "$2:$3" "$d" && echo "$d"
    done' dockvm-mkdir "$1" "$2" "$3"
}

step_workdir_step() {
  : > $B/created
  mount_tools
  status=0
  ids=$(resolve_user "${DOCKVM_WORKDIR_USER:-}") || status=1
  if [ $status = 0 ]; then
    set -- $ids
    make_dirs_in_image "$DOCKVM_WORKDIR_PATH" "$1" "$2" > /dev/null || status=1
  fi
  unmount_tools
  remove_created
  return $status
}

# A COPY/ADD: the tar at DOCKVM_COPY_AT ("OFFSET SIZE" on the inputs disk) holds the entries relative to
# the destination, with --chmod applied (by the host). Unpacked first into a staging directory, then
# written into the image by GNU tar run chrooted, so that the destination and every directory on the way
# resolve through the image's own symlinks (COPY bin/ /bin/ over a merged /usr fills /usr/bin), with the
# --chown owner given to every entry (tar --owner: the setuid bits a chown would clear are kept).
#   DOCKVM_COPY_DEST    absolute destination
#   DOCKVM_COPY_SINGLE  the tar's one file, when dest names the file unless it is an existing directory
#   DOCKVM_COPY_ROOT    1: the tar's "./" entry carries a named directory's metadata, for a dest made now
#   DOCKVM_COPY_CHOWN   --chown as written ("" = keep the owners in the tar)
step_copy_step() {
  : > $B/created
  staging=$B/scratch/staging
  rm -rf $staging
  mkdir -p $staging
  set -- $DOCKVM_COPY_AT
  # shellcheck disable=SC2086
  dd if="$(disk "$DOCKVM_INPUTS")" bs=1M iflag=skip_bytes,count_bytes skip="$1" count="$2" 2>/dev/null |
    "$GNU_TAR" -C $staging $TAR_XATTRS --same-owner --numeric-owner --same-permissions -xf - || die "cannot read the COPY input"
  mount_tools
  status=0
  uid=0 gid=0
  if [ -n "${DOCKVM_COPY_CHOWN:-}" ]; then
    if ids=$(resolve_owner "$DOCKVM_COPY_CHOWN"); then
      # shellcheck disable=SC2086
      set -- $ids
      uid=$1 gid=$2
    else
      status=1
    fi
  fi
  dest=$DOCKVM_COPY_DEST
  if [ $status = 0 ] && [ -n "${DOCKVM_COPY_SINGLE:-}" ]; then
    # "COPY file /x": /x itself, unless /x is a directory already (then /x/file)
    if in_image test -d "$dest"; then :; else
      name=${dest%/}; name=${name##*/}
      [ "$name" = "$DOCKVM_COPY_SINGLE" ] || mv "$staging/$DOCKVM_COPY_SINGLE" "$staging/$name"
      dest=${dest%/*}; [ -n "$dest" ] || dest=/
    fi
  fi
  members=""
  if [ $status = 0 ]; then
    # A destination made now takes a named directory's own metadata (the tar's "./"); an existing one keeps its own.
    in_image test -d "$dest" || [ "${DOCKVM_COPY_ROOT:-0}" != 1 ] || members=.
    make_dirs_in_image "$dest" "$uid" "$gid" > /dev/null || status=1
  fi
  if [ $status = 0 ]; then
    owner=""
    [ -z "${DOCKVM_COPY_CHOWN:-}" ] || owner="--owner=$uid --group=$gid"
    set -o pipefail
    # shellcheck disable=SC2086
    if [ "$members" = . ]; then
      "$GNU_TAR" -C $staging $TAR_XATTRS --numeric-owner $owner -cf - .
    else
      (cd $staging && find . -mindepth 1 -maxdepth 1 -print0 | "$GNU_TAR" $TAR_XATTRS --numeric-owner $owner --null -T - -cf -)
    fi | image_tar -C "$dest" $TAR_XATTRS --same-owner --numeric-owner --same-permissions --keep-directory-symlink -xf - || status=1
    set +o pipefail
  fi
  unmount_tools
  remove_created
  rm -rf $staging
  return $status
}

# A RUN's file inputs (a bind mount's source, a heredoc run as a file): the tar at DOCKVM_INPUT_AT unpacked
# into $1 on the scratch disk, for run-step to mount or copy.
step_unpack_input() {
  rm -rf "$1"
  mkdir -p "$1"
  dir=$1
  set -- $DOCKVM_INPUT_AT
  dd if="$(disk "$DOCKVM_INPUTS")" bs=1M iflag=skip_bytes,count_bytes skip="$1" count="$2" 2>/dev/null |
    "$GNU_TAR" -C "$dir" $TAR_XATTRS --same-owner --numeric-owner --same-permissions -xf - || die "cannot read the RUN input"
}

# stdin → $SECRETS/ID on the guest's /run tmpfs, readable by root only, for the next run-step, which
# mounts it and removes $SECRETS when it ends: a later step (root in the VM, out of its chroot) finds it
# in no file (test/security/secrets.test.ts).
SECRETS=/run/dockvm-secrets
step_secret() {
  mkdir -p -m 700 $SECRETS
  (umask 077 && cat > "$SECRETS/$1")
}

# After a run-step: its secrets removed (its mounts of them died with its namespace); a test builtin
# first, so that a step without secrets costs no fork.
forget_secrets() {
  [ ! -d $SECRETS ] || rm -rf $SECRETS
}

# A RUN. Arguments: NAME=VALUE… -- ARGV…; DOCKVM_RUN_USER, DOCKVM_RUN_WORKDIR, DOCKVM_RUN_NETWORK (none:
# a network namespace of its own with only lo), DOCKVM_RUN_MOUNTS (one mount a line, tab-separated):
#   cache  TARGET  DIR(on the scratch disk, kept across the build's steps)  MODE  UID  GID  ro|rw
#   tmpfs  TARGET  SIZE(bytes, 0 = default)
#   secret TARGET  ID  MODE  UID  GID
#   env    NAME    ID                              (a secret given as a variable)
#   bind   TARGET  SOURCE(a directory or file staged on the scratch disk)  ro|rw
#   inline TARGET  SOURCE(a file staged on the scratch disk, copied to TARGET under /dev/pipes)
# Mount points the image lacks are made for the step and removed after it, so they leave no trace.
step_run_step() {
  : > $B/created
  for d in proc sys dev; do make_mount_point $d; done
  if [ -f /etc/resolv.conf ] && [ -d "$R/etc" ] && [ ! -e "$R/etc/resolv.conf" ] && [ ! -L "$R/etc/resolv.conf" ]; then
    : > "$R/etc/resolv.conf"
    echo etc/resolv.conf >> $B/created
  fi
  mount_tools
  status=0
  ids=$(resolve_user "${DOCKVM_RUN_USER:-}") || status=125
  if [ $status = 0 ]; then
    # shellcheck disable=SC2086
    set -- $ids "$@"
    uid=$1 gid=$2 groups=$3 home=$4
    shift 4
    # the working directory is made when missing, as Docker does (root-owned)
    make_dirs_in_image "${DOCKVM_RUN_WORKDIR:-/}" 0 0 > /dev/null || status=125
  fi
  # Mount targets resolved in the image (through its symlinks), their mount points made.
  : > $B/mounts
  if [ $status = 0 ] && [ -n "${DOCKVM_RUN_MOUNTS:-}" ]; then
    printf '%s\n' "$DOCKVM_RUN_MOUNTS" > $B/mounts.in
    while IFS="	" read -r type target a b c d e; do
      [ -n "$type" ] || continue
      case "$type" in
        env|inline) printf '%s\t%s\t%s\n' "$type" "$target" "$a" >> $B/mounts; continue ;;
        secret) point=file ;;
        bind) if [ -d "$a" ]; then point=dir; else point=file; fi ;;
        *) point=dir ;;
      esac
      parent=${target%/*}
      make_dirs_in_image "${parent:-/}" 0 0 | sed 's,^/,,' >> $B/created
      if [ $point = dir ]; then
        make_dirs_in_image "$target" 0 0 | sed 's,^/,,' >> $B/created
      elif ! in_image test -e "$target"; then
        in_image touch "$target" && echo "${target#/}" >> $B/created
      fi
      resolved=$(in_image realpath "$target") || { status=125; break; }
      if [ "$type" = cache ] && [ ! -d "$a" ]; then
        mkdir -p "$a" && chmod "$b" "$a" && chown "$c:$d" "$a"
      fi
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$type" "$R$resolved" "$a" "$b" "$c" "$d" "$e" >> $B/mounts
    done < $B/mounts.in
  fi
  unmount_tools
  if [ $status != 0 ]; then remove_created; forget_secrets; return $status; fi
  netns=""
  [ "${DOCKVM_RUN_NETWORK:-default}" = none ] && netns=--net
  limit_memory
  set +e
  # shellcheck disable=SC2086
  DOCKVM_IDS="$uid $gid $groups" DOCKVM_HOME=$home DOCKVM_TOOLS=$T DOCKVM_SECRETS=$SECRETS \
    /bin/dockvm-agent pids-guard unshare --mount --uts --ipc --pid --fork $netns --propagation private /bin/sh -c '
      # (Single-quoted: no apostrophes in it, comments included.)
      set -e
      R=$1; shift
      mount -t proc proc "$R/proc"
      mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
      mount -t tmpfs -o mode=755,nosuid,size=65536k dev "$R/dev"
      mknod -m 666 "$R/dev/null" c 1 3
      mknod -m 666 "$R/dev/zero" c 1 5
      mknod -m 666 "$R/dev/full" c 1 7
      mknod -m 666 "$R/dev/random" c 1 8
      mknod -m 666 "$R/dev/urandom" c 1 9
      mknod -m 666 "$R/dev/tty" c 5 0
      mkdir "$R/dev/pts" "$R/dev/shm"
      mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$R/dev/pts"
      ln -s pts/ptmx "$R/dev/ptmx"
      ln -s /proc/self/fd "$R/dev/fd"
      ln -s /proc/self/fd/0 "$R/dev/stdin"; ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
      mount -t tmpfs -o mode=1777,nosuid,nodev shm "$R/dev/shm"
      mount --bind "$DOCKVM_TOOLS" "$R/.dockvm"
      if [ -f /etc/resolv.conf ] && [ -f "$R/etc/resolv.conf" ] && [ ! -L "$R/etc/resolv.conf" ]; then
        mount --bind /etc/resolv.conf "$R/etc/resolv.conf"
      fi
      ip link set lo up
      hostname dockvm
      secret_env=""
      while IFS="	" read -r type at a b c d e; do
        case "$type" in
          cache)
            mount --bind "$a" "$at"
            [ "$e" = rw ] || mount -o remount,bind,ro "$at" ;;
          tmpfs)
            if [ "$a" = 0 ]; then mount -t tmpfs tmpfs "$at"; else mount -t tmpfs -o "size=$a" tmpfs "$at"; fi ;;
          secret)
            # a copy per mount on a tmpfs of its own, with the mode and owner asked for
            mkdir -p /run/dockvm-secret-mounts
            mount -t tmpfs -o mode=700 secret /run/dockvm-secret-mounts
            cp "$DOCKVM_SECRETS/$a" "/run/dockvm-secret-mounts/$a"
            chmod "$b" "/run/dockvm-secret-mounts/$a"; chown "$c:$d" "/run/dockvm-secret-mounts/$a"
            mount --bind "/run/dockvm-secret-mounts/$a" "$at"
            mount -o remount,bind,ro "$at"
            umount -l /run/dockvm-secret-mounts ;;
          bind)
            mount --bind "$a" "$at"
            [ "$b" = rw ] || mount -o remount,bind,ro "$at" ;;
          env) secret_env="$secret_env $at" ;;
          inline)
            mkdir -p "$R${at%/*}"
            cp -p "$a" "$R$at" ;;
        esac
      done < /build/mounts
      set -- $DOCKVM_IDS "$@"
      uid=$1 gid=$2 groups=$3
      shift 3
      # "$@": NAME=VALUE… -- ARGV… → NAME=VALUE… [HOME=…] chroot ROOT as-user UID GID GROUPS DIR ARGV…
      n=$#
      home=1
      while [ "$n" -gt 0 ]; do
        a=$1; shift; n=$((n - 1))
        case "$a" in HOME=*) home=0 ;; esac
        if [ "$a" = -- ]; then
          [ $home = 0 ] || set -- "$@" "HOME=$DOCKVM_HOME"
          for name in $secret_env; do
            while IFS="	" read -r type at id rest; do
              [ "$type" = env ] && [ "$at" = "$name" ] && set -- "$@" "$name=$(cat "$DOCKVM_SECRETS/$id")"
            done < /build/mounts
          done
          set -- "$@" /bin/busybox chroot "$R" /.dockvm/dockvm-agent as-user "$uid" "$gid" "$groups" "${DOCKVM_RUN_WORKDIR:-/}"
          while [ "$n" -gt 0 ]; do set -- "$@" "$1"; shift; n=$((n - 1)); done
          break
        fi
        set -- "$@" "$a"
      done
      exec env -i "$@" < /dev/null
    ' dockvm-ns "$R" "$@"
  status=$?
  set -e
  forget_secrets
  report_oom
  remove_created
  return $status
}

# After a step: its upper becomes a layer. Unmounted, described as step_pack describes an upper (the
# agent's upper-manifest: metadata, and where each file's bytes lie on the scratch disk, which the host
# reads after the VM is gone; an upper that is a lower from now on is never written again, so those
# extents stay valid), the manifest written onto the output disk at the next free MiB; its new directories
# listed; then the upper becomes the top lower under a fresh upper. Prints dockvm-manifest-offset=,
# dockvm-manifest-bytes=, dockvm-upper-kib= (what the upper takes, as du -sk counts), a line "--", then the
# new directories (the ones the lowers lack), NUL-separated. (extraCommands left the overlay unmounted.)
# Without a fork (each costs 10-50 ms under TCG, and a commit took ~20): whether $1 is a mount point, and
# the value of the line KEY=VALUE of file $2 whose KEY= is $1, into $value.
is_mounted() {
  while read -r _ at _; do [ "$at" != "$1" ] || return 0; done < /proc/mounts
  return 1
}
field() {
  value=""
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in "$1"*) value=${line#"$1"}; return 0 ;; esac
  done < "$2"
  return 1
}

step_commit() {
  if is_mounted $R; then umount $R; fi
  read -r count < $S/count
  read -r lowers < $S/lowers
  read -r offset < $S/offset
  upper=$B/scratch/upper
  manifest=/run/dockvm-manifest
  : > $manifest
  disk_dev "$DOCKVM_SCRATCH"
  /bin/dockvm-agent upper-manifest $upper $manifest "$dev" > $B/manifest.out || exit 71
  bytes=""
  if field dockvm-manifest-bytes= $B/manifest.out; then bytes=${value%%[!0-9]*}; fi
  disk_dev "$DOCKVM_OUT"
  dd if=$manifest of="$dev" bs=1M seek="$offset" conv=notrunc 2>/dev/null || die "cannot write the manifest of layer $count"
  rm $manifest
  echo "dockvm-manifest-offset=$((offset * 1048576))"
  echo "dockvm-manifest-bytes=$bytes"
  if field dockvm-upper-kib= $B/manifest.out; then echo "dockvm-upper-kib=$value"; fi
  echo "$((offset + bytes / 1048576 + 1))" > $S/offset
  echo --
  cd $upper
  if [ "$lowers" = $B/empty ]; then
    find . -mindepth 1 -type d -exec sh -c 'for d; do printf "%s\0" "${d#./}"; done' dockvm-newdirs {} +
  else
    mkdir -p $B/lowers
    mount -t overlay overlay -o "ro,lowerdir=$lowers:$B/empty" $B/lowers
    find . -mindepth 1 -type d -exec sh -c 'for d; do [ -d "/build/lowers/$d" ] || printf "%s\0" "${d#./}"; done' dockvm-newdirs {} +
    umount $B/lowers
  fi
  cd /
  mv $upper $B/scratch/layers/$count
  if [ "$lowers" = $B/empty ]; then lowers=$B/scratch/layers/$count; else lowers=$B/scratch/layers/$count:$lowers; fi
  echo "$lowers" > $S/lowers
  echo $((count + 1)) > $S/count
  rm -rf $B/scratch/work
  mkdir -p $upper $B/scratch/work
  mount -t overlay overlay \
    -o "lowerdir=$lowers,upperdir=$upper,workdir=$B/scratch/work,redirect_dir=off,index=off,metacopy=off,xino=off" $R
}

# After a stage's last step: each cache mount directory ($@, on the scratch disk) as a tar onto the output
# disk, one after another from the next free MiB, for the host to keep until the next build (its content
# never enters a layer). Prints "dockvm-cache=OFFSET BYTES" per directory, in order. No xattrs: a cache
# needs none; numeric owners, as run-step's extraction restores them.
step_cache_save() {
  offset=$(cat $S/offset)
  disk_dev "$DOCKVM_OUT"
  for dir; do
    [ -d "$dir" ] || die "no cache mount directory $dir"
    { "$GNU_TAR" -C "$dir" --format=gnu --numeric-owner --sort=name --totals -cf - . || echo dockvm-tar-failed >&2; } 2> $B/cache-save.err |
      dd of="$dev" bs=1M seek="$offset" conv=notrunc 2>/dev/null || die "cannot write the cache mount $dir"
    bytes=$(sed -n 's/^Total bytes written: \([0-9]*\).*/\1/p' $B/cache-save.err)
    if [ -z "$bytes" ] || grep -q '^dockvm-tar-failed$' $B/cache-save.err; then die "cannot tar the cache mount $dir: $(cat $B/cache-save.err)"; fi
    echo "dockvm-cache=$((offset * 1048576)) $bytes"
    offset=$((offset + bytes / 1048576 + 1))
  done
  echo "$offset" > $S/offset
}

step=$1
shift
case "$step" in
  mount) step_mount ;;
  run) step_run "$@" ;;
  mount-run) step_mount_run "$@" ;;
  extra) step_extra ;;
  pack) step_pack ;;
  merged) step_merged ;;
  unpack-reference) step_unpack_reference ;;
  newdirs) step_newdirs ;;
  stage-mount) step_stage_mount ;;
  run-step) step_run_step "$@" ;;
  copy-step) step_copy_step ;;
  unpack-input) step_unpack_input "$1" ;;
  workdir-step) step_workdir_step ;;
  secret) step_secret "$1" ;;
  commit) step_commit ;;
  cache-save) step_cache_save "$@" ;;
  fill-lower) step_fill_lower ;;
  *) die "unknown step $step" ;;
esac
