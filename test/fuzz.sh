#!/usr/bin/env bash
# test/fuzz.sh: bounded libFuzzer runs over the pure-C parsers.
#
# Builds each target test/fuzz/fuzz_*.c with clang
# (-fsanitize=fuzzer,address,undefined) against src/protocol/protocol.c alone, and
# fuzzes it for WX_FUZZ_SECONDS (default 20) seconds, starting from the seed
# corpus (test/fuzz/corpus/<target>/) and the inputs of past crashes
# (test/fuzz/regressions/<target>/).  New corpus entries stay in the scratch
# directory.  Exits non-zero when a target crashes or breaks one of its
# properties; the input is printed (Base64) and kept: add it to
# test/fuzz/regressions/<target>/ together with the fix, and the fast suite
# replays it from then on.  WX_FUZZ_TARGETS limits the run to some targets.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

wx_install_deps
wx_install_harden_deps
wx_make_work
secs=${WX_FUZZ_SECONDS:-20}
inc=$("$WX_PG_CONFIG" --includedir-server)
out="$WX_WORK/fuzz"
mkdir -p "$out"
status=0
for src in "$WX_ROOT"/test/fuzz/fuzz_*.c; do
    t=$(basename "$src" .c)
    if [ -n "${WX_FUZZ_TARGETS:-}" ] && ! [[ " $WX_FUZZ_TARGETS " == *" $t "* ]]; then continue; fi
    clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
        -Wall -Wextra -Werror -I"$WX_ROOT/src/protocol" -isystem "$inc" \
        -o "$out/$t" "$src" "$WX_ROOT/src/protocol/protocol.c"
    mkdir -p "$out/$t.corpus" "$out/$t.crash"
    cp "$WX_ROOT/test/fuzz/corpus/$t"/* "$out/$t.corpus/"
    seeds=("$out/$t.corpus")
    [ -d "$WX_ROOT/test/fuzz/regressions/$t" ] && seeds+=("$WX_ROOT/test/fuzz/regressions/$t")
    wx_log "fuzzing $t for ${secs}s"
    if ! ASAN_OPTIONS=detect_leaks=1 "$out/$t" -max_total_time="$secs" -timeout=10 \
            -max_len=4096 -print_final_stats=1 -artifact_prefix="$out/$t.crash/" \
            "${seeds[@]}" >"$out/$t.log" 2>&1; then
        status=1
        tail -n 40 "$out/$t.log"
        for c in "$out/$t.crash"/*; do
            [ -f "$c" ] || continue
            echo "---- $t failed on $(basename "$c") (Base64 below); add it to test/fuzz/regressions/$t/"
            base64 -w 76 "$c"
        done
    else
        grep -E '^stat::number_of_executed_units|^Done' "$out/$t.log" | tr '\n' ' ' >&2
        echo >&2
    fi
done
exit $status
