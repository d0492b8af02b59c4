#!/usr/bin/env bash
# Seeds the NAR and export-stream fuzz targets with real inputs made by Nix itself
# (random bytes rarely get past the magic): NARs of small trees of every node kind, and
# export streams of paths added to a throwaway store. Needs nix-store on PATH.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
nar=corpus/nar_reader
exp=corpus/export_reader
mkdir -p "$nar" "$exp"

t="$work/trees"
mkdir -p "$t"
printf 'hello\n' >"$t/file"
: >"$t/empty"
printf '#!/bin/sh\necho hi\n' >"$t/exe"; chmod +x "$t/exe"
ln -s /nix/store/foo "$t/link"
mkdir -p "$t/dir/sub/deeper" "$t/emptydir"
printf 'a' >"$t/dir/a"; printf 'bb' >"$t/dir/sub/b"; ln -s ../a "$t/dir/sub/l"
printf '1234567' >"$t/dir/sub/deeper/seven"; chmod +x "$t/dir/sub/deeper/seven"
head -c 4096 /dev/urandom >"$t/dir/random"
for node in file empty exe link dir emptydir; do
    nix-store --dump "$t/$node" >"$nar/$node.nar"
done

store="$work/store"
export NIX_REMOTE="local?root=$store"
prev=
for node in file exe link dir; do
    p=$(nix-store --add "$t/$node")
    nix-store --export "$p" >"$exp/$node.export"
    prev="$prev $p"
done
# A stream of several items, and one of a path with references.
printf 'refers to %s\n' "$(echo $prev | cut -d' ' -f1)" >"$t/refs"
r=$(nix-store --add "$t/refs")
nix-store --export $prev >"$exp/several.export"
nix-store --export "$r" >"$exp/refs.export"
echo "seeded $(ls "$nar" | wc -l) NARs and $(ls "$exp" | wc -l) export streams"
# Narinfos and nix-cache-info as `nix copy --to file://` writes them, and a public key.
ni=corpus/narinfo
mkdir -p "$ni"
for c in none xz zstd; do
    NIX_CONFIG=$'experimental-features = nix-command\nbuild-users-group = ' nix copy --to "file://$work/cache-$c?compression=$c" $prev "$r" 2>/dev/null
    for f in "$work/cache-$c"/*.narinfo; do cp "$f" "$ni/$c-$(basename "$f")"; done
done
cp "$work/cache-none/nix-cache-info" "$ni/"
nix-store --generate-binary-cache-key seed-1 "$work/sk" "$ni/public-key"
echo "seeded $(ls "$ni" | wc -l) narinfo inputs"
