# Shared paths for tools/setup, tools/vm, tools/test. Sourced, not run.
# The VM cache lives inside the checkout (target/ is git-ignored) but not under /var:
# the guest mounts over parts of /var and would not see the modules there.
VM_CACHE=${RCX_DM_VM_CACHE:-$PWD/target/vm}
VM_KERNEL_DIR=$VM_CACHE/kernel
VM_VENV=$VM_CACHE/venv

# True when this host itself has device-mapper (as root): the kernel lists it in /proc/misc,
# after loading dm-mod if need be. A /dev/mapper/control node alone proves nothing: installing
# dmsetup or lvm2 makes one even on a kernel without device-mapper.
host_has_dm() {
  [[ $EUID -eq 0 ]] || return 1
  grep -qw device-mapper /proc/misc 2>/dev/null && return 0
  modprobe -q dm-mod 2>/dev/null && grep -qw device-mapper /proc/misc 2>/dev/null
}
