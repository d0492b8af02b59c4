#!/usr/bin/env bash
# Brings up the shipped overlay store (config/default.toml) from scratch, as root:
# a lower store with sample content, an upper layer, the OverlayFS mount; then shows
# reads falling through to the lower store and an add landing in the upper layer.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "quickstart.sh mounts OverlayFS: run it as root (sudo $0)" >&2
    exit 2
fi
cargo build --release --quiet
# .cargo/config.toml builds for the host triple explicitly (a static binary), so the
# binary sits under target/<triple>/release.
BIN="target/$(cargo -vV | sed -n 's/^host: //p')/release/overlay-store"
os() { "$BIN" "$@"; }
CFG=config/default.toml
LOWER="local?root=$PWD/var/lower"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "lower store: sample content in var/lower (a plain local store; never written by the overlay)"
HELLO=$(os --store "$LOWER" add examples/sample/hello.sh)
SHARE=$(os --store "$LOWER" add examples/sample/share)
echo "$HELLO"; echo "$SHARE"

say "init + mount the overlay (upper layer var/upper, workdir var/work, mount point var/merged/nix/store)"
os -c "$CFG" init
os -c "$CFG" mount
os -c "$CFG" check-mount
echo "stock Nix can open the same store as: $(os -c "$CFG" uri)"

say "reads fall through to the lower store"
os -c "$CFG" path-info --json "$HELLO"
os -c "$CFG" query --hash "$HELLO"
"var/merged/nix/store/$(basename "$HELLO")"

say "adding content the lower store already has writes nothing to the upper layer"
os -c "$CFG" add examples/sample/hello.sh
echo "upper layer: $(ls -A var/upper | grep -v '^.links$' | tr '\n' ' ')"

say "a new path lands in the upper layer"
NEW=$(os -c "$CFG" add README.md)
echo "$NEW"
echo "upper layer: $(ls -A var/upper | grep -v '^.links$' | tr '\n' ' ')"

say "optimise: the lower store gets README.md too; the upper copy is removed, the overlay remounted"
os --store "$LOWER" add README.md >/dev/null
os -c "$CFG" optimise
echo "upper layer: $(ls -A var/upper | grep -v '^.links$' | tr '\n' ' ')"

say "gc: a rooted path survives, an unrooted one goes; the lower store is untouched"
KEEP=$(os -c "$CFG" add examples/sample/share/README)
mkdir -p var/merged/nix/var/nix/gcroots
ln -sfn "$KEEP" var/merged/nix/var/nix/gcroots/quickstart
GONE=$(os -c "$CFG" add config/default.toml)
os -c "$CFG" gc --print-roots
os -c "$CFG" gc
echo "upper layer: $(ls -A var/upper | grep -v '^.links$' | tr '\n' ' ')"
os -c "$CFG" stats

say "verify every path the upper database registers, through the mount"
os -c "$CFG" verify --check-contents

say "done: the overlay stays mounted; '$BIN -c $CFG umount' unmounts it"
