# A hostile RUN step looking for values everywhere it can read in the build VM (test/security/secrets.test.ts).
# Arguments: NAME PART PART…: each value is given in two parts, so that no argument, file or command line
# holds it whole. Prints "found NAME at WHERE" for each hit, and what it searched.
# Root in the VM with Docker's capabilities: it makes block devices of the VM's disks (CAP_MKNOD) and
# leaves its chroot (CAP_SYS_CHROOT) for the guest's own root, where it reads every file of every
# mount but the kernel's pseudo-filesystems and the read-only images of the base (squashfs, the overlay
# over them; their bytes come from the host's cache, and the overlay's upper is read on the scratch disk).
use strict;
use warnings;

my %needles;
while (@ARGV >= 3) { my ($name, $a, $b) = splice @ARGV, 0, 3; $needles{$name} = $a . $b; }
my $longest = 0;
for (values %needles) { $longest = length if length > $longest; }
$| = 1;

# Reads FH in 4 MiB chunks up to $limit bytes from $offset; reports each needle found as at WHERE.
my %seen;
sub scan {
  my ($fh, $where, $offset, $limit) = @_;
  sysseek($fh, $offset, 0) or return 0 if $offset;
  my ($carry, $read) = ('', 0);
  while ($read < $limit) {
    my $want = $limit - $read < 4 << 20 ? $limit - $read : 4 << 20;
    my $got = sysread($fh, my $chunk, $want);
    last unless $got;
    $read += $got;
    my $window = $carry . $chunk;
    for my $name (sort keys %needles) {
      print "found $name at $where\n" if index($window, $needles{$name}) >= 0 && !$seen{"$name $where"}++;
    }
    $carry = substr($window, -($longest - 1));
  }
  return $read;
}

# The disks, raw. An ext4 disk (the scratch disk) is read where its block bitmaps say it is in use
# (dumpe2fs): all of an 8 GiB disk would take minutes under TCG, and a byte in no used block is in no file.
# Another disk up to 1 GiB whole; a larger one (the output disk: step manifests, one after another from
# its start) its first 256 MiB.
for my $sys (glob '/sys/block/sd* /sys/block/vd*') {
  my $name = (split m{/}, $sys)[-1];
  open(my $d, '<', "$sys/dev") or next;
  my ($major, $minor) = split /:/, scalar <$d>;
  chomp $minor;
  my $model = '';
  if (open(my $m, '<', "$sys/device/model")) { $model = <$m> // ''; $model =~ s/\s+$//; }
  open(my $s, '<', "$sys/size") or next;
  my $bytes = 512 * <$s>;
  my $node = "/hunt-$name";
  if (system('mknod', $node, 'b', $major, $minor) != 0) { print "disk $model: mknod refused\n"; next; }
  open(my $fh, '<:raw', $node) or do { print "disk $model: open refused\n"; next; };
  my @ranges;
  my $blocksize;
  my @groups = `dumpe2fs $node 2>/dev/null`;
  for (@groups) { $blocksize = $1 if /^Block size:\s+(\d+)/; }
  if ($blocksize) {
    my ($start, $end);
    for (@groups) {
      if (/^Group \d+: \(Blocks (\d+)-(\d+)\)/) { ($start, $end) = ($1, $2); }
      elsif (/^\s+Free blocks: ?(.*)$/ && defined $start) {
        my $next = $start;
        for my $free (split /,\s*/, $1) {
          my ($a, $b) = $free =~ /(\d+)(?:-(\d+))?/ or next;
          $b //= $a;
          push @ranges, [$next, $a - $next] if $a > $next;
          $next = $b + 1;
        }
        push @ranges, [$next, $end + 1 - $next] if $end + 1 > $next;
        undef $start;
      }
    }
    @ranges = map { [$_->[0] * $blocksize, $_->[1] * $blocksize] } @ranges;
  } else {
    @ranges = ([0, $bytes <= 1 << 30 ? $bytes : 256 << 20]);
  }
  my $read = 0;
  $read += scan($fh, "disk $model", @$_) for @ranges;
  printf "disk %s: read %d MiB of %d MiB%s\n", $model, $read >> 20, $bytes >> 20, $blocksize ? ' (its used blocks)' : '';
  close $fh;
  unlink $node;
}

# Out of the chroot, to the root of the step's mount namespace: the guest's own.
mkdir '/hunt-chroot';
chroot '/hunt-chroot' or die "chroot: $!";
chdir '..' for 1 .. 64;
chroot '.' or die "chroot .: $!";
chdir '/';
rmdir '/build/root/hunt-chroot';

my %skip_type = map { $_ => 1 } qw(proc sysfs cgroup cgroup2 devpts debugfs tracefs securityfs bpf configfs pstore efivarfs mqueue squashfs overlay);
my (%skip, %walked);
open(my $mounts, '<', '/proc/self/mounts') or die "mounts: $!";
while (<$mounts>) {
  my (undef, $at, $type) = split;
  $at =~ s/\\040/ /g;
  if ($skip_type{$type}) { $skip{$at} = 1 } else { $walked{$at} = $type }
}
# from / and from each mount under a skipped one (the step's own /dev, /dev/shm, /tmp mounts in the overlay)
my @roots = ('/', grep { my $at = $_; grep { $at =~ m{^\Q$_\E/} } keys %skip } keys %walked);
my ($files, $total) = (0, 0);
# perl-base has no File::Find: a walk of its own, not following symlinks, regular files read
sub walk {
  my ($dir) = @_;
  opendir(my $dh, $dir) or return;
  for my $entry (readdir $dh) {
    next if $entry eq '.' || $entry eq '..';
    my $path = $dir eq '/' ? "/$entry" : "$dir/$entry";
    next if $skip{$path};
    lstat $path or next;
    if (-d _) { walk($path) }
    elsif (-f _ && open(my $fh, '<:raw', $path)) { $files++; $total += scan($fh, "file $path", 0, 1 << 40); }
  }
}
walk($_) for sort @roots;
print "walked $_ ($walked{$_})\n" for sort keys %walked;
printf "files: read %d, %d MiB\n", $files, $total >> 20;
