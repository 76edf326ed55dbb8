# Sourced by the bench scripts: starts `eddy server` on its embedded broker in a temporary
# directory ($DIR), listening on 127.0.0.1:$PORT, waits until it answers /healthcheck (at most
# 300 s: a first run may build it), and stops it and removes $DIR when the script exits.
# EDDY=path/to/eddy runs that binary instead of ./scripts/eddy (which builds one).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=$(mktemp -d)
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$DIR"' EXIT
"${EDDY:-$ROOT/scripts/eddy}" --data-dir "$DIR/data" --broker-port 0 server --listen "127.0.0.1:$PORT" >"$DIR/log" 2>&1 &
SERVER=$!
for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$PORT/healthcheck" >/dev/null && break; sleep 0.5; done
curl -sf "http://127.0.0.1:$PORT/healthcheck" >/dev/null || { echo "eddy server did not answer on port $PORT; its log:" >&2; tail -20 "$DIR/log" >&2; exit 1; }
