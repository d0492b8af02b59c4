#!/bin/sh
# The quick start for an installed overlay-store (as root): in DIR (default
# ./overlay-store-quickstart) it makes a lower store with sample content, an overlay store
# spec, mounts the overlay, and shows reads falling through, an add landing in the upper
# layer, GC and doctor; then unmounts. Nothing outside DIR is touched.
#   /usr/share/overlay-store/quickstart.sh [DIR]
set -eu
if [ "$(id -u)" != 0 ]; then
    echo "quickstart.sh mounts OverlayFS: run it as root (sudo $0 $*)" >&2
    exit 2
fi
command -v overlay-store >/dev/null || { echo "overlay-store is not on PATH" >&2; exit 2; }
DIR=${1:-./overlay-store-quickstart}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
CFG="$DIR/store.toml"
say() { printf '\n== %s\n' "$*"; }

say "a lower store in $DIR/lower, with sample content"
mkdir -p "$DIR/sample/share"
printf '#!/bin/sh\necho hello from the lower store\n' > "$DIR/sample/hello.sh"
chmod +x "$DIR/sample/hello.sh"
echo "shared data" > "$DIR/sample/share/README"
HELLO=$(overlay-store --store "local?root=$DIR/lower" add "$DIR/sample/hello.sh")
overlay-store --store "local?root=$DIR/lower" add "$DIR/sample/share" >/dev/null
echo "$HELLO"

say "the store spec: $CFG"
cat > "$CFG" <<TOML
type = "local-overlay"
root = "merged"          # mount point merged/nix/store; state merged/nix/var/nix
upper-layer = "upper"
check-mount = true

[lower-store]
type = "local"
root = "lower"

[mount]
workdir = "work"
TOML
cat "$CFG"

say "init and mount"
overlay-store -c "$CFG" init
overlay-store -c "$CFG" mount
overlay-store -c "$CFG" check-mount

say "reads fall through to the lower store"
overlay-store -c "$CFG" path-info "$HELLO"
"$DIR/merged/nix/store/$(basename "$HELLO")"

say "a new path lands in the upper layer"
echo "made on this machine" > "$DIR/sample/local.txt"
NEW=$(overlay-store -c "$CFG" add "$DIR/sample/local.txt")
echo "$NEW"
echo "upper layer: $(ls -A "$DIR/upper" | grep -v '^.links$' | tr '\n' ' ')"

say "gc collects it (nothing roots it); the lower store is untouched"
overlay-store -c "$CFG" gc
overlay-store -c "$CFG" stats

say "doctor"
overlay-store -c "$CFG" doctor

say "unmount"
overlay-store -c "$CFG" umount
echo "done; remove $DIR when you no longer want it"
