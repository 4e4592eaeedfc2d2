# cargo_exe TARGET CARGO-ARGS...: build with `cargo CARGO-ARGS --message-format=json-render-diagnostics`
# and print the executable cargo made for the target named TARGET (its path has a hash in it).
# Compiler errors stay readable on stderr. Sourced, not run.
cargo_exe() {
  local target=$1 json exe
  shift
  json=$(cargo "$@" --message-format=json-render-diagnostics) || return
  exe=$(TARGET=$target python3 -c '
import json, os, sys
exe = None
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == os.environ["TARGET"] and m.get("executable"):
        exe = m["executable"]
if exe:
    print(exe)
' <<<"$json")
  if [[ -z "$exe" || ! -x "$exe" ]]; then
    echo "cargo built no executable for the target \"$target\" (cargo $*)" >&2
    return 1
  fi
  echo "$exe"
}
