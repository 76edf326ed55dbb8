#!/usr/bin/env bash
# Instructions per call of a function in a criterion benchmark, counted by callgrind: a figure
# that, unlike time, does not move with the machine's load, for comparing two builds of a hot path.
#
#   bench/instructions.sh BENCH_BINARY FILTER FUNCTION
#   bench/instructions.sh "$CARGO_TARGET_DIR"/release/deps/decode-<hash> decode_100k_bids RecordDecoder::decode
#
# BENCH_BINARY is what `cargo bench -p eddy-format --bench decode --no-run` prints; FILTER picks the
# criterion benchmark; FUNCTION is a substring of the symbol whose inclusive count is divided by its
# calls (closures excluded). Needs valgrind.
set -euo pipefail
if [ $# -ne 3 ]; then
  sed -n 2,10p "$0" >&2
  exit 2
fi
binary=$1 filter=$2 function=$3
profile=$(mktemp /tmp/eddy-callgrind.XXXXXX)
trap 'rm -f "$profile"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$profile" \
  "$binary" --bench --profile-time 2 "$filter" >/dev/null 2>&1
python3 - "$profile" "$function" <<'PY'
import re
import sys

path, function = sys.argv[1], sys.argv[2]
names = {}
callee = None
calls = inclusive = 0
lines = open(path).read().splitlines()
for i, line in enumerate(lines):
    named = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?", line)
    if named:
        if named.group(3):
            names[named.group(2)] = named.group(3)
        callee = names.get(named.group(2), "") if named.group(1) == "cfn" else None
    elif line.startswith("calls=") and callee and function in callee and "closure" not in callee:
        calls += int(line.split("=")[1].split()[0])
        inclusive += int(lines[i + 1].split()[1])
if calls == 0:
    sys.exit(f"no call of a function matching {function!r}")
print(f"{function}: {calls} calls, {inclusive / calls:,.0f} instructions per call")
PY
