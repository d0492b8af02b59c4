#!/usr/bin/env bash
# bench/cache-bench.sh: `overlay-store copy --from` against stock `nix copy --from`, side by
# side in one run, from the same binary cache served over HTTP on loopback by a plain file
# server (Python's http.server, threaded, with a real listen backlog), into a fresh plain local store each run. Then narinfo
# throughput of `serve --http` against the same file server on the same narinfos.
#
#   bench/cache-bench.sh            # 1,000 paths, 500 MiB, zstd, 3 runs each
#   N=200 MIB=50 RUNS=1 bench/cache-bench.sh   # a smoke run
#
# Environment: N (paths), MIB (total MiB), RUNS, COMP (cache compression: zstd, xz, none),
# BIN (our binary; default the release build), OUT (append the report to this file).
# Needs nix-store/nix (Nix 2.8), python3 and wrk. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000}
MIB=${MIB:-500}
RUNS=${RUNS:-3}
COMP=${COMP:-zstd}
BIN=${BIN:-$PWD/target/x86_64-unknown-linux-gnu/release/overlay-store}
[ -x "$BIN" ] || cargo build --release --quiet
# Nix 2.8 cannot parse a cache URL with a space, so the scratch dir is space-free.
W=$(mktemp -d /tmp/cachebench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    chmod -R u+w "$W" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
export HOME=$W/home NIX_CONFIG=$'build-users-group = \nexperimental-features = nix-command\nsubstituters = '
mkdir -p "$HOME"

echo "generating $N paths, $MIB MiB ..." >&2
python3 - "$W/files" "$N" "$MIB" <<'EOF'
import os, sys, random
d, n, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(d)
rng = random.Random(7)
total = mib << 20
# Sizes spread log-uniformly, scaled to the total; half random bytes, half text-like.
ws = [rng.lognormvariate(0, 1.2) for _ in range(n)]
s = sum(ws)
for i, w in enumerate(ws):
    size = max(64, int(total * w / s))
    with open(os.path.join(d, f"pkg-{i:05d}"), "wb") as f:
        half = size // 2
        f.write(os.urandom(half))
        f.write((b"lib/share/doc %d " % i) * ((size - half) // 16 + 1))
EOF
"$BIN" --store "local?root=$W/src" add "$W"/files/* > "$W/paths"
mapfile -t PATHS < "$W/paths"
echo "publishing with nix copy --to (compression=$COMP) ..." >&2
nix copy --store "$W/src" --to "file://$W/cache?compression=$COMP" "${PATHS[@]}" 2>/dev/null
NAR_BYTES=$(du -sb "$W/src/nix/store" | cut -f1)
CACHE_BYTES=$(du -sb "$W/cache" | cut -f1)

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(port)
# http.server's listen backlog of 5 drops SYNs under parallel clients (a 1 s retransmit
# each), which no real cache server does: the same handler with a backlog of 512.
python3 - "$PORT" "$W/cache" >/dev/null 2>&1 <<'PY' &
import functools, http.server, sys
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 512
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])
handler.log_message = lambda *a: None
Server(("127.0.0.1", int(sys.argv[1])), handler).serve_forever()
PY
PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/nix-cache-info" >/dev/null 2>&1 && break; sleep 0.1; done
URL=http://127.0.0.1:$PORT

now() { date +%s.%N; }
ours_times=()
nix_times=()
for r in $(seq "$RUNS"); do
    rm -rf "$W/d-ours" "$W/d-nix" "$HOME/.cache"
    t0=$(now)
    "$BIN" -q --store "local?root=$W/d-ours" copy --no-check-sigs --from "$URL" "${PATHS[@]}"
    t1=$(now)
    nix copy --no-check-sigs --from "$URL" --to "$W/d-nix" "${PATHS[@]}" 2>/dev/null
    t2=$(now)
    ours_times+=("$(echo "$t1 - $t0" | bc)")
    nix_times+=("$(echo "$t2 - $t1" | bc)")
    echo "run $r: ours ${ours_times[-1]} s, nix ${nix_times[-1]} s" >&2
    chmod -R u+w "$W/d-ours" "$W/d-nix"
done
"$BIN" -q --store "local?root=$W/d-ours" verify --check-contents
nix-store --store "$W/d-ours" --verify --check-contents 2>/dev/null

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
MO=$(median "${ours_times[@]}")
MN=$(median "${nix_times[@]}")

# Narinfo throughput: serve --http (narinfos made from the database) against the file
# server holding Nix's narinfo files for the same paths.
SPORT=$(port)
"$BIN" --store "local?root=$W/src" serve --http "127.0.0.1:$SPORT" 2>"$W/serve.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q serving "$W/serve.log" 2>/dev/null && break; sleep 0.1; done
for p in "${PATHS[@]}"; do b=${p#/nix/store/}; echo "${b%%-*}.narinfo"; done > "$W/narinfos"
{
    echo 'local names = {}'
    echo "for line in io.lines(\"$W/narinfos\") do names[#names + 1] = \"/\" .. line end"
    echo 'local i = 0'
    echo 'request = function() i = i % #names + 1; return wrk.format("GET", names[i]) end'
} > "$W/narinfos.lua"
rps() { # base URL: narinfo requests per second, 2 threads x 8 keep-alive connections, 5 s
    wrk -t 2 -c 8 -d 5s -s "$W/narinfos.lua" "$1" | awk '/Requests\/sec/ {print $2}'
}
TS=$(rps "http://127.0.0.1:$SPORT")
TF=$(rps "$URL")

report=$(cat <<EOF
## Binary caches (bench/cache-bench.sh, $(date -u +%Y-%m-%d))

$N paths, $((NAR_BYTES >> 20)) MiB of NARs, cache compression \`$COMP\` ($((CACHE_BYTES >> 20)) MiB),
served by Python's \`http.server\` (threaded, backlog 512) on loopback; into a fresh plain local store; median of $RUNS
(ours ${ours_times[*]} s; Nix ${nix_times[*]} s). $(nproc) cores.

| what | overlay-store | Nix 2.8 / file server | ratio | target |
|---|---|---|---|---|
| \`copy --from\` vs \`nix copy --from\` | $MO s | $MN s | $(echo "scale=2; $MN / $MO" | bc)x | ≥ 1.5x |
| narinfo requests/s (wrk, 8 connections, each path's narinfo in turn): \`serve --http\` vs the file server | $TS | $TF | $(echo "scale=2; $TS / $TF" | bc)x | — |
EOF
)
echo "$report"
if [ -n "${OUT:-}" ]; then printf '\n%s\n' "$report" >> "$OUT"; fi
