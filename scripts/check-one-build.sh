#!/usr/bin/env bash
# Checks that the README's two commands share one build: every unit (crate, features, profile and
# the same for all it depends on) that `cargo run` compiles for the demo is one that `cargo test
# --workspace --all-targets` reuses. Reads both unit graphs (no compilation); a crate listed here
# would be compiled twice on a fresh machine. Fix by adding its features to workspace-hack/.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# --unit-graph is unstable; RUSTC_BOOTSTRAP lets the stable cargo print it (nothing is compiled).
RUSTC_BOOTSTRAP=1 cargo build --locked --unit-graph -Zunstable-options >"$dir/demo.json"
RUSTC_BOOTSTRAP=1 cargo test --locked --workspace --all-targets --no-run --unit-graph \
    -Zunstable-options >"$dir/test.json"
python3 - "$dir/demo.json" "$dir/test.json" <<'PY'
import hashlib, json, sys

def unit_hashes(path):
    units = json.load(open(path))["units"]
    memo = {}
    def digest(i):
        if i not in memo:
            unit = units[i]
            profile = dict(unit["profile"])
            profile.pop("name")  # `dev` and `test` build dependencies alike
            own = (unit["pkg_id"], unit["target"]["name"], unit["target"]["kind"], unit["mode"],
                   sorted(unit["features"]), profile, unit.get("platform"))
            deps = sorted(digest(d["index"]) for d in unit["dependencies"])
            memo[i] = hashlib.sha1(json.dumps([own, deps], sort_keys=True).encode()).hexdigest()
        return memo[i]
    return {digest(i): u for i, u in enumerate(units)}

demo, test = unit_hashes(sys.argv[1]), unit_hashes(sys.argv[2])
# The demo's own binary differs from the test build's only in its profile name's effects (none);
# workspace crates are cheap to rebuild, so only third-party crates are checked.
rebuilt = sorted({u["pkg_id"].split("#")[-1] for h, u in demo.items()
                  if h not in test and not u["pkg_id"].startswith("path+")})
if rebuilt:
    print("the test command would build these again after the demo (features differ):")
    for name in rebuilt:
        print("  " + name)
    sys.exit(1)
print(f"one build: all {len(demo)} units of the demo are reused by the test command")
PY
