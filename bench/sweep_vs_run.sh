#!/usr/bin/env bash
# Images per minute: `sdgraph sweep` (one process, models loaded once) against one `sdgraph run` process per
# image, on the same graph and the same N seeds; prints both rates and their ratio.
#
#   bench/sweep_vs_run.sh [N] [GRAPH] [extra --set ...]
#   SDGRAPH=target/release/sdgraph bench/sweep_vs_run.sh 20 graphs/txt2img.ron
#
# Defaults: N=8, graphs/txt2img.ron (the demo model, 64x64, 20 steps), the sdgraph on PATH or target/debug.
set -euo pipefail
n=${1:-8}
graph=${2:-graphs/txt2img.ron}
shift $(( $# > 2 ? 2 : $# )) || true
sets=("$@")
bin=${SDGRAPH:-$(command -v sdgraph || echo target/debug/sdgraph)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

seeds=$(seq -s, 1 "$n")
echo "{\"product\": {\"sample.seed\": [$seeds]}}" > "$work/params.json"
set_args=()
for s in "${sets[@]}"; do set_args+=(--set "$s"); done

now() { date +%s.%N; }

# One untimed run first, so both modes find the file-hash cache and the shader/driver caches warm.
"$bin" run "$graph" --quiet --out-dir "$work/warm" "${set_args[@]}" > /dev/null

t0=$(now)
for s in $(seq 1 "$n"); do
  "$bin" run "$graph" --quiet --out-dir "$work/run" --set "sample.seed=$s" "${set_args[@]}" > /dev/null
done
t1=$(now)
if [ ${#sets[@]} -gt 0 ]; then
  # Extra --set values apply to every row: written into a copy of the graph would lose its folder, so they go
  # into the product as one-value columns.
  python3 - "$work/params.json" "${sets[@]}" <<'EOF'
import json, sys
p = sys.argv[1]
d = json.load(open(p))
for s in sys.argv[2:]:
    k, v = s.split("=", 1)
    try:
        v = json.loads(v)
    except ValueError:
        pass
    d["product"][k] = [v]
json.dump(d, open(p, "w"))
EOF
fi
"$bin" sweep "$graph" --params "$work/params.json" --out-dir "$work/sweep" --quiet
t2=$(now)

runs=$(ls "$work/run"/*.png | wc -l)
swept=$(ls "$work/sweep"/row-*/*.png | wc -l)
python3 - "$n" "$t0" "$t1" "$t2" "$runs" "$swept" <<'EOF'
import sys
n, t0, t1, t2, runs, swept = int(sys.argv[1]), *map(float, sys.argv[2:5]), int(sys.argv[5]), int(sys.argv[6])
assert runs == n and swept == n, (runs, swept)
run_rate, sweep_rate = 60 * n / (t1 - t0), 60 * n / (t2 - t1)
print(f"{n} images: sdgraph run per image {t1 - t0:.1f} s ({run_rate:.1f} images/min); "
      f"sdgraph sweep {t2 - t1:.1f} s ({sweep_rate:.1f} images/min); sweep/run = {sweep_rate / run_rate:.2f}x")
EOF
