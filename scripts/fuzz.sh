#!/usr/bin/env bash
# Coverage-guided fuzzing of deployd's parsers (cargo-fuzz / libFuzzer), one target at a time.
# Not part of .ci/run. See the README's "Fuzzing" section.
#
#   scripts/fuzz.sh [-t SECONDS | -r RUNS] [--asan] [TARGET...]
#
#   -t SECONDS  fuzz each target for this long (default 60)
#   -r RUNS     fuzz each target for this many executions instead
#   --asan      build with AddressSanitizer (default: no sanitizer; deployd forbids unsafe
#               code, and the uninstrumented build runs 2-3 times more inputs per second)
#   TARGET...   default: every target in fuzz/Cargo.toml
#
# Needs nightly flags (-Z sanitizer, coverage passes): on the stable toolchain they are
# allowed with RUSTC_BOOTSTRAP=1, set here. Installs cargo-fuzz if it is missing. The grown
# corpus stays in fuzz/corpus/<target>/ (only seed-* files are committed); crashes, hangs and
# OOMs are written to fuzz/artifacts/<target>/ and make the script exit 1.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1

mode=(-max_total_time=60)
sanitizer=none
targets=()
while (($#)); do
    case "$1" in
        -t) mode=(-max_total_time="$2"); shift 2 ;;
        -r) mode=(-runs="$2"); shift 2 ;;
        --asan) sanitizer=address; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo fuzz list)
fi

echo "building the fuzz targets (sanitizer: $sanitizer)" >&2
cargo fuzz build --sanitizer "$sanitizer" >&2
bin=target/x86_64-unknown-linux-gnu/release

failed=0
total_runs=0
printf '%-18s %12s %9s %10s  %s\n' target executions seconds exec/s result
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log=$(mktemp)
    start=$(date +%s.%N)
    # One process (-jobs=1 equivalent): the machine is shared. -timeout: an input that takes
    # longer than 10 s is a hang; -rss_limit_mb: more than 2 GiB is an OOM.
    set +e
    "$bin/$t" "${mode[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" "corpus/$t" >"$log" 2>&1
    rc=$?
    set -e
    end=$(date +%s.%N)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    runs=${runs:-0}
    secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
    rate=$(awk -v r="$runs" -v s="$secs" 'BEGIN { printf "%d", (s > 0 ? r / s : 0) }')
    total_runs=$((total_runs + runs))
    if ((rc == 0)); then
        result=ok
    else
        result="FOUND (exit $rc): $(sed -n 's/.*Test unit written to //p' "$log" | head -1)"
        failed=1
        cp "$log" "artifacts/$t/last-run.log"
    fi
    printf '%-18s %12s %9s %10s  %s\n' "$t" "$runs" "$secs" "$rate" "$result"
    rm -f "$log"
done
echo "total executions: $total_runs"
exit "$failed"
