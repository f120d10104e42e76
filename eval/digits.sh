#!/usr/bin/env bash
# The class-erasure benchmark on the shipped digit model (docs/benchmark.md): every method tuned on development
# digit 5, tested on 1, 3 and 7 over three seeds against RT, with the attack, every-digit and multi-concept sections.
# Hours on 2 CPU cores; every finished run is cached in OUT and reused by the next call.
set -euo pipefail
OUT=${OUT:-./benchmark-out}

erase benchmark --tune --all-digits rest --multi-concept 1,3,7 --out "$OUT" --report-dir "$OUT/report"
