#!/usr/bin/env bash
# Nexmark with quixstreams over the events `eddy bench load-nexmark` writes: the stateless q0, q1, q2,
# q14, q21, q22 and the stateful q3, q4, q5, q7, q8, q11, q15, q16, q17 (joins, windows, sessions,
# aggregations), as Eddy defines them.
#
#   EVENTS=200000 bench/peers/quixstreams/run.sh
#
# Environment:
#   EVENTS        Nexmark events to load (about 92% are bids)        [200000]
#   QUERIES       queries to run, space-separated                    [all of them]
#   BOOTSTRAP     an existing Kafka (HOST:PORT); without it a temporary embedded broker is started
#   BROKER_PORT   port of the temporary broker                       [a free one]
#   EDDY          the eddy binary [release build if it has load-nexmark, else the debug build]
#   VENV          the Python venv                                    [$HOME/.cache/eddy-peers/quixstreams-venv]
#   VERIFY        1: after each timed stateless run, check every output row against the input [1]
#                 (the stateful queries always check their result against a reference)
#   QUERY_TIMEOUT seconds one query may take before it is killed     [900]
#   IDLE_STOP     stateful queries: stop once no message arrived for this long (seconds) [5]
#                 (q4's join and group_by can pause longer than 5 s mid-run on a slow broker)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
EVENTS="${EVENTS:-200000}"
QUERIES="${QUERIES:-q0 q1 q2 q14 q21 q22 q3 q4 q5 q7 q8 q11 q15 q16 q17}"
VENV="${VENV:-$HOME/.cache/eddy-peers/quixstreams-venv}"
VERIFY="${VERIFY:-1}"
QUERY_TIMEOUT="${QUERY_TIMEOUT:-900}"
IDLE_STOP="${IDLE_STOP:-5}"
target="${CARGO_TARGET_DIR:-$HOME/.cache/eddy-target}"

log() { echo "[run.sh] $*" >&2; }

# --- the eddy binary: prefer a release build, but only one that has `bench load-nexmark`.
if [[ -z "${EDDY:-}" ]]; then
    for candidate in "$target/release/eddy" "$target/debug/eddy"; do
        if [[ -x "$candidate" ]] && "$candidate" bench load-nexmark --help >/dev/null 2>&1; then
            EDDY="$candidate"
            break
        fi
    done
fi
if [[ -z "${EDDY:-}" ]]; then
    log "no eddy binary with 'bench load-nexmark' under $target; build one or set EDDY"
    exit 1
fi
log "eddy: $EDDY"

# --- the venv, (re)installed when requirements.txt changed.
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    log "installing $here/requirements.txt into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    echo "$want" >"$stamp"
fi
python="$VENV/bin/python"
log "$("$python" -c 'import quixstreams, confluent_kafka as c; print("quixstreams", quixstreams.__version__, "confluent-kafka", c.__version__, "librdkafka", c.libversion()[0])' 2>/dev/null)"

# --- the broker: the one given, or a temporary embedded one.
work="$(mktemp -d "${TMPDIR:-/tmp}/quix-nexmark.XXXXXX")"
broker_pid=""
cleanup() {
    local status=$?
    if [[ -n "$broker_pid" ]] && kill -0 "$broker_pid" 2>/dev/null; then
        log "stopping the embedded broker (pid $broker_pid)"
        kill "$broker_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$broker_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$broker_pid" 2>/dev/null || true
    fi
    # the `sleep infinity` that holds the shell's stdin open
    [[ -n "${holder_pid:-}" ]] && kill "$holder_pid" 2>/dev/null || true
    if [[ $status -ne 0 && -f "$work/broker.log" ]]; then
        log "broker log (last lines):"; tail -n 20 "$work/broker.log" >&2 || true
    fi
    rm -rf "$work"
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for_port() { # host port seconds
    local deadline=$((SECONDS + $3))
    until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
        if ((SECONDS >= deadline)); then return 1; fi
        if [[ -n "$broker_pid" ]] && ! kill -0 "$broker_pid" 2>/dev/null; then return 1; fi
        sleep 0.2
    done
}

if [[ -n "${BOOTSTRAP:-}" ]]; then
    bootstrap="$BOOTSTRAP"
    prefix="${TOPIC_PREFIX:-quixbench-$(date +%s)-}"
else
    port="${BROKER_PORT:-$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
    bootstrap="127.0.0.1:$port"
    prefix="${TOPIC_PREFIX:-nexmark_}"
    log "starting an embedded broker on $bootstrap (data in $work/data)"
    # eddy without --bootstrap-servers runs the broker and an SQL shell on stdin: a fifo that
    # a `sleep infinity` holds open keeps the shell waiting, and the broker up.
    mkfifo "$work/stdin"
    sleep infinity >"$work/stdin" &
    holder_pid=$!
    "$EDDY" --data-dir "$work/data" --broker-port "$port" <"$work/stdin" >"$work/broker.log" 2>&1 &
    broker_pid=$!
    if ! wait_for_port 127.0.0.1 "$port" 60; then
        log "the embedded broker did not listen on $bootstrap within 60 s"
        exit 1
    fi
fi

# --- the data.
log "loading $EVENTS events into ${prefix}{person,auction,bid}"
load_out="$(timeout 600 "$EDDY" --bootstrap-servers "$bootstrap" bench load-nexmark \
    --events "$EVENTS" --partitions 1 --topic-prefix "$prefix")"
log "$load_out"
bids="$(sed -n 's/.* \([0-9][0-9]*\) bids to .*/\1/p' <<<"$load_out")"
if [[ -z "$bids" || "$bids" -eq 0 ]]; then
    log "cannot read the bid count from: $load_out"
    exit 1
fi

# --- the queries, one after another.
verify_flag=()
[[ "$VERIFY" == 1 ]] && verify_flag=(--verify)
# A query whose output differs from its reference (exit status 3) is reported and the others still
# run; the script then exits with status 3. Any other failure stops it.
mismatched=()
for query in $QUERIES; do
    log "running $query over $bids bids"
    # stderr (quixstreams' log, warnings) goes to a file, shown only on failure
    status=0
    timeout "$QUERY_TIMEOUT" "$python" "$here/nexmark.py" "$query" --bootstrap "$bootstrap" \
        --topic "${prefix}bid" --expected "$bids" --idle-stop "$IDLE_STOP" "${verify_flag[@]}" \
        2>"$work/$query.err" || status=$?
    if [[ $status -eq 3 ]]; then
        mismatched+=("$query")
    elif [[ $status -ne 0 ]]; then
        log "$query failed; its stderr:"
        tail -n 40 "$work/$query.err" >&2
        exit 1
    fi
done
if [[ ${#mismatched[@]} -gt 0 ]]; then
    log "output differs from the reference for: ${mismatched[*]}"
    exit 3
fi
