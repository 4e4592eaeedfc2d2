#!/usr/bin/env bash
# The rcx-dm walkthrough. Runs as root on a kernel with device-mapper: tools/demo starts it,
# inside the VM when the host has no dm. Each step prints its title and exact command, so the
# output reads as a transcript. Add steps at the end with:  step "title" cmd args...
# (for pipelines or redirections: step "title" bash -c '...').
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RCX_DM=${RCX_DM_BIN:-$PWD/target/debug/rcx-dm}

# Scratch space for backing files: tools/vm provides a tmpfs in $RCX_DM_SCRATCH; on a real dm
# host make a temporary folder instead and remove it at the end.
if [[ -z "${RCX_DM_SCRATCH:-}" ]]; then
  demo_tmp=$(mktemp -d /tmp/rcx-dm-demo.XXXXXX)
  RCX_DM_SCRATCH=$demo_tmp
fi
export RCX_DM_SCRATCH

n=0
step() {
  local title=$1
  shift
  n=$((n + 1))
  printf '\n== %d. %s\n$' "$n" "$title"
  if [[ $1 == bash && ${2:-} == -c ]]; then
    printf ' %s' "$3" # a shell snippet reads best as written
  else
    printf ' %q' "$@"
  fi
  printf '\n'
  "$@"
}

step "kernel" uname -r

# The kernel's dm ioctl version and its targets, read through the rcx-dm library. Until the
# `rcx-dm dm-info` subcommand exists, fall back to dmsetup (libdevmapper) for the same facts.
if [[ -x "$RCX_DM" ]] && "$RCX_DM" dm-info --help >/dev/null 2>&1; then
  step "device-mapper version and targets (through rcx-dm)" "$RCX_DM" dm-info
else
  echo "(no '$RCX_DM dm-info' yet: using dmsetup)"
  step "device-mapper version" dmsetup version
  step "device-mapper targets" dmsetup targets
fi

# The "Thin Provisioning" walkthrough of seed 002, one rcx-dm command per manual step.
export RCX_DM_ROOT=$RCX_DM_SCRATCH/rcx-root RCX_DM_POOL=demo
mnt=$RCX_DM_SCRATCH/mnt
mkdir -p "$mnt"
cleanup() { umount "$mnt" 2>/dev/null || true; "$RCX_DM" pool destroy --force 2>/dev/null || true; }
trap 'cleanup; [[ -n "${demo_tmp:-}" ]] && rm -rf "$demo_tmp"' EXIT
step "a thin pool: 100G sparse data, 1G metadata, loop devices, thin-pool target" \
  "$RCX_DM" pool create --data-size 100G --meta-size 1G --overcommit
step "a 1G thin volume, id 0" "$RCX_DM" thin create 0 --size 1G
step "an ext4 filesystem on it, and a file" bash -c \
  "mkfs.ext4 -q /dev/mapper/demo-0 && mount /dev/mapper/demo-0 $mnt && echo 'written in 0' > $mnt/first && umount $mnt"
step "snapshot 0 as 1 (0 is suspended around create_snap)" "$RCX_DM" snap 1 0
step "write a second file in 1" bash -c \
  "mount /dev/mapper/demo-1 $mnt && echo 'written in 1' > $mnt/second && umount $mnt"
step "snapshot of the snapshot: 2 from 1" "$RCX_DM" snap 2 1 --name web
step "2 has both files" bash -c "mount -o ro /dev/mapper/demo-2 $mnt && ls -l $mnt && cat $mnt/first $mnt/second; umount $mnt"
step "0 is unchanged" bash -c "mount -o ro /dev/mapper/demo-0 $mnt && ls $mnt; umount $mnt"
step "the volumes" "$RCX_DM" list
step "the pool, as the kernel reports it" "$RCX_DM" pool status
step "take everything down (as a reboot would)" "$RCX_DM" pool deactivate
step "nothing left in /dev/mapper" ls /dev/mapper
step "bring the pool and its volumes back" "$RCX_DM" pool activate
step "the data survived" bash -c "mount -o ro /dev/mapper/demo-2 $mnt && cat $mnt/first $mnt/second; umount $mnt"
step "delete 2 (--force deactivates it first)" "$RCX_DM" delete web --force
step "a base volume with a busybox-static root filesystem" bash -c \
  "dev=\$($RCX_DM thin create --size 256M --name base | tail -n1) && mkfs.ext4 -q \$dev && mount \$dev $mnt \
   && mkdir -p $mnt/bin $mnt/proc $mnt/sys $mnt/dev $mnt/tmp && cp /bin/busybox $mnt/bin/ \
   && for a in sh ps hostname cat ls echo; do ln -s busybox $mnt/bin/\$a; done && umount $mnt && $RCX_DM deactivate base"
step "mark it read-only: runs get their own snapshot of it" "$RCX_DM" set-readonly base
step "run a container: new namespaces, pivot_root, PID 1, its own hostname" \
  "$RCX_DM" run --rm --hostname demo-box --memory 64M base -- /bin/sh -c 'echo "hostname: $(hostname)"; ps; ls /'
step "exit status comes back" bash -c "$RCX_DM run --rm base -- /bin/sh -c 'exit 3'; echo \"exit status: \$?\""
step "nothing left behind but the base" "$RCX_DM" list
step "destroy the pool" "$RCX_DM" pool destroy --force

printf '\n== demo done\n'
