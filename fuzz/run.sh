#!/bin/sh
# Run every cargo-fuzz target for a bounded time (default 60 s each), offline once the
# fuzz crate's dependencies are fetched. New inputs go to a scratch corpus (not the committed
# one in fuzz/corpus/), crashes to fuzz/artifacts/<target>/.
#   fuzz/run.sh            # all targets, 60 s each
#   SECS=10 fuzz/run.sh journal image
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
set -eu
cd "$(dirname "$0")"
SECS=${SECS:-60}
SCRATCH=${SCRATCH:-target/scratch-corpus}
TARGETS=${*:-"superblock journal checkpoint image oci_import admin_request snapshotter"}
cargo +nightly fuzz build -O
status=0
for t in $TARGETS; do
    mkdir -p "$SCRATCH/$t" "artifacts/$t"
    extra=""
    [ "$t" = oci_import ] && extra="-max_len=65536"
    echo "== $t: ${SECS}s"
    if ! cargo +nightly fuzz run -O "$t" "$SCRATCH/$t" "corpus/$t" -- \
        -max_total_time="$SECS" -print_final_stats=1 -rss_limit_mb=4096 -timeout=30 -detect_leaks=0 \
        -artifact_prefix="artifacts/$t/" $extra 2>&1 | grep -E "^(Done|stat::number_of_executed_units|==[0-9]+== ERROR)|panicked|SUMMARY"; then
        :
    fi
    if ls "artifacts/$t"/crash-* "artifacts/$t"/oom-* "artifacts/$t"/timeout-* >/dev/null 2>&1; then
        echo "!! $t: see fuzz/artifacts/$t/"
        status=1
    fi
done
exit $status
