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
  RCX_DM_SCRATCH=$(mktemp -d /tmp/rcx-dm-demo.XXXXXX)
  trap 'rm -rf "$RCX_DM_SCRATCH"' EXIT
fi
export RCX_DM_SCRATCH

n=0
step() {
  local title=$1
  shift
  n=$((n + 1))
  printf '\n== %d. %s\n$' "$n" "$title"
  printf ' %q' "$@"
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

# Later: pool, volume and snapshot walkthrough steps go here.

printf '\n== demo done\n'
