#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for a bounded time and prints
# the executions of each, for docs/benchmarks.md (*Fuzzing*).
#
#   scripts/fuzz.sh [SECONDS per target] [TARGET...]
#
# Needs the nightly toolchain and `cargo install cargo-fuzz`. Targets are
# built once (`-s none`: the code under test forbids `unsafe`, so the
# address sanitizer would only slow it down; `-a`: debug assertions, so
# arithmetic overflow panics), then run $FUZZ_JOBS at a time (default: the
# number of CPUs). New inputs go to a scratch corpus (the checked-in one,
# fuzz/corpus/<target>/, only seeds it); a crash lands in
# fuzz/artifacts/<target>/, which `cargo test -p prism-fuzz-cases` replays.
set -euo pipefail

cd "$(dirname "$0")/.."
seconds="${1:-120}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
jobs="${FUZZ_JOBS:-$(nproc)}"
target_dir="${CARGO_TARGET_DIR:-fuzz/target}"
scratch="$(mktemp -d -t prism-fuzz.XXXXXX)"
echo "scratch corpora and logs in $scratch" >&2

cargo +nightly fuzz build -s none -a --codegen-units 16 >&2

run() {
    local t="$1"
    mkdir -p "$scratch/$t" "fuzz/artifacts/$t"
    # The binary, not `cargo fuzz run`: several run at once without
    # waiting on cargo's build lock.
    "$target_dir/x86_64-unknown-linux-gnu/release/$t" "$scratch/$t" "fuzz/corpus/$t" \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" >"$scratch/$t.log" 2>&1 || true
    local runs corpus
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t.log")"
    corpus="$(find "$scratch/$t" -type f | wc -l)"
    printf '%s\t%s\t%s\t%s\t%s\n' "$t" "$seconds" "${runs:-?}" "$corpus" \
        "$(grep -c '^SUMMARY: libFuzzer' "$scratch/$t.log" || true)"
}
export -f run
export scratch seconds target_dir

printf 'target\tseconds\texecutions\tnew corpus files\tcrashes\n'
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run {}'
find fuzz/artifacts -type f >&2
