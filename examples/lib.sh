# Shared by the examples: talk to Eddy's REST API with curl. Sourced, not executed.
# EDDY_URL is the server (default http://127.0.0.1:8088, where `./scripts/eddy server` listens).
set -euo pipefail

EDDY_URL="${EDDY_URL:-http://127.0.0.1:8088}"

# JSON string body of a SQL text: backslashes and double quotes escaped, lines joined.
eddy_json_string() {
  printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr '\n' ' '
}

# Waits (at most 60 s) for the server to answer /healthcheck.
eddy_wait() {
  for _ in $(seq 1 120); do
    if curl -fsS "$EDDY_URL/healthcheck" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  echo "no Eddy server at $EDDY_URL: start one with ./scripts/eddy server" >&2
  return 1
}

# Runs statements through POST /ksql; fails with the server's message on an error.
eddy_ksql() {
  local body response status
  body="{\"ksql\":\"$(eddy_json_string "$1")\",\"streamsProperties\":{\"ksql.streams.auto.offset.reset\":\"earliest\"}}"
  response="$(curl -sS -w '\n%{http_code}' -X POST "$EDDY_URL/ksql" \
    -H 'Content-Type: application/vnd.ksql.v1+json' -d "$body")"
  status="${response##*$'\n'}"
  if [ "$status" != "200" ]; then
    echo "statement failed (HTTP $status): ${response%$'\n'*}" >&2
    return 1
  fi
}

# Runs a pull query through POST /query (reading its own writes) and prints one line per row,
# the columns separated by spaces.
eddy_pull() {
  local body
  body="{\"ksql\":\"$(eddy_json_string "$1")\",\"streamsProperties\":{\"eddy.read_your_writes\":\"true\"}}"
  curl -fsS -X POST "$EDDY_URL/query" -H 'Content-Type: application/vnd.ksql.v1+json' -d "$body" \
    | { grep -o '"columns":\[[^]]*\]' || true; } \
    | sed -e 's/^"columns":\[//' -e 's/\]$//' -e 's/"//g' -e 's/,/ /g'
}

# True when the server knows a stream or table of this name (upper case).
eddy_has_source() {
  curl -fsS -X POST "$EDDY_URL/ksql" -H 'Content-Type: application/vnd.ksql.v1+json' \
    -d '{"ksql":"SHOW STREAMS; SHOW TABLES;"}' | grep -q "\"name\":\"$1\""
}
