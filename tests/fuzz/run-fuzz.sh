#!/bin/sh
# SPDX-License-Identifier: MIT
# Runs a libFuzzer target for FUZZ_SECONDS (default 120) over the seed
# corpus; any crash, leak, sanitizer report or timeout fails the run and
# leaves the reproducer next to the scratch corpus.
# Usage: run-fuzz.sh FUZZER SCRATCH_CORPUS SEED_DIR...
set -eu
fuzzer=$1
scratch=$2
shift 2
mkdir -p "$scratch"
exec "$fuzzer" -max_total_time="${FUZZ_SECONDS:-120}" -timeout=10 -rss_limit_mb=2048 \
	-max_len=65536 -print_final_stats=1 -artifact_prefix="$scratch/../" "$scratch" "$@"
