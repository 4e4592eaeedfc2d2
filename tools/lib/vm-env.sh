# Shared paths for tools/setup, tools/vm, tools/test. Sourced, not run.
# The VM cache lives inside the checkout (target/ is git-ignored) but not under /var:
# the guest mounts over parts of /var and would not see the modules there.
VM_CACHE=${RCX_DM_VM_CACHE:-$PWD/target/vm}
VM_KERNEL_DIR=$VM_CACHE/kernel
VM_VENV=$VM_CACHE/venv
