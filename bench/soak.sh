#!/usr/bin/env bash
# Soak: the whole JetStream pipeline at a steady rate for a long time, watching memory.
#
#   fstrm_blast (RATE frames/s) --unix--> tapbus-broker --> nats-server -js (stream DNSTAP)
#       --> tapbus-reduce    (durable reduce)    --> records on nats tapbus.reduced.*
#       --> tapbus-aggregate (durable aggregate) --> batches on nats tapbus.metrics.soak
#                                                    --> tapbus-mimir --> Prometheus (remote write)
#       --> tapbus-loki      (durable loki)      --> a local HTTP sink answering 204
#
# Every 10 s it prints each process's RSS (VmRSS from /proc/PID/status, MiB); at the end a
# summary per process (min/max RSS after the warm-up, the growth from the first to the last
# minute after it) and what went through: events, published, dropped, what each consumer
# took, acked and held, and what arrived downstream.
#
# Usage: bench/soak.sh [--no-build] [--keep]
# Environment: RATE (20000 frames/s), DURATION (600 s of sending), WARMUP (60 s),
#   SAMPLE (10 s), CAPTURE (testdata/dnstap/bulk-100k.fstrm), STREAM_MAX_BYTES (1 GiB:
#   the stream's size limit, so a long soak does not fill the disk; old messages go),
#   SETTLE (180 s: how long to wait after the last frame for the consumers to finish),
#   TAPBUS_LOG (warn), SHIPPED_ACK_PENDING (unset: each durable's max_ack_pending is set to
#   its consumer's max_pending, reduce 200000, aggregate and loki 20000; 1: the shipped
#   default 4096, with which a consumer that holds messages until its next write, reduce
#   and aggregate with an output, takes at most 4096 messages per write and falls behind).
# Needs nats-server, prometheus and python3 (the 204 sink). Every process it starts is
# stopped by its PID from an EXIT trap (SIGTERM, SIGKILL after 10 s), and every wait is
# bounded; the whole run takes DURATION + at most SETTLE + about 60 s.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RATE=${RATE:-20000}
DURATION=${DURATION:-600}
WARMUP=${WARMUP:-60}
SAMPLE=${SAMPLE:-10}
SETTLE=${SETTLE:-180}
STREAM_MAX_BYTES=${STREAM_MAX_BYTES:-1073741824}
CAPTURE=${CAPTURE:-$ROOT/testdata/dnstap/bulk-100k.fstrm}
export TAPBUS_LOG=${TAPBUS_LOG:-warn}
BUILD=1
KEEP=
for a in "$@"; do
  case $a in
    --no-build) BUILD= ;;
    --keep) KEEP=1 ;;
    -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done

die() { echo "soak.sh: $*" >&2; exit 1; }
NATS_SERVER=$(command -v nats-server || echo /usr/sbin/nats-server)
[ -x "$NATS_SERVER" ] || die "nats-server is needed (apt-get install -y nats-server)"
command -v prometheus >/dev/null || die "prometheus is needed (apt-get install -y prometheus)"
command -v python3 >/dev/null || die "python3 is needed (the 204 sink)"

if [ ! -f "$CAPTURE" ] && [ -f "$CAPTURE.gz" ]; then
  gunzip -c "$CAPTURE.gz" >"$CAPTURE.tmp.$$" && mv "$CAPTURE.tmp.$$" "$CAPTURE"
fi
[ -r "$CAPTURE" ] || die "capture not found: $CAPTURE"

if [ -n "$BUILD" ]; then
  (cd "$ROOT" && cargo build --release -p tapbus-broker --examples --bins \
    -p tapbus-reduce -p tapbus-aggregate -p tapbus-mimir -p tapbus-loki) >&2
fi
REL=${CARGO_TARGET_DIR:-$ROOT/target}/release
for b in tapbus-broker tapbus-reduce tapbus-aggregate tapbus-mimir tapbus-loki examples/fstrm_blast; do
  [ -x "$REL/$b" ] || die "$REL/$b missing (run without --no-build)"
done

WORK=$(mktemp -d /tmp/tapbus-soak.XXXXXX)
PIDS=()
NAMES=()
started() { PIDS+=("$1"); NAMES+=("$2"); }
cleanup() {
  local rc=$? i p n
  trap '' INT TERM HUP
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    p=${PIDS[$i]}
    kill -TERM "$p" 2>/dev/null || continue
    for ((n = 0; n < 100; n++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then
      echo "soak.sh: ${NAMES[$i]} ($p) did not stop in 10 s: SIGKILL" >&2
      kill -KILL "$p" 2>/dev/null || true
    fi
    wait "$p" 2>/dev/null || true
  done
  if [ -n "$KEEP" ]; then echo "logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
TAKEN=" "
pick_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 30000))
    [[ "$TAKEN" == *" $p "* ]] || ! port_free "$p" || break
  done
  TAKEN+="$p "
  echo "$p"
}
http_get() { # PORT PATH: the body, empty when it fails
  (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3 \
    && timeout 5 sed '1,/^\r$/d' <&3) 2>/dev/null || true
}
wait_for() { # what seconds command...
  local what=$1 secs=$2 n
  shift 2
  for ((n = 0; n < secs * 10; n++)); do "$@" && return 0; sleep 0.1; done
  die "$what did not come up in ${secs}s (logs in $WORK; use --keep)"
}
listening() { ! port_free "$1"; }
healthy() { [ -n "$(http_get "$1" /health)" ]; }
# metric PORT NAME [LABEL-FILTER]: the sum of NAME's samples (a filter such as
# 'consumer="reduce"' keeps only lines containing it).
metric() {
  http_get "$1" /metrics | awk -v n="$2" -v f="${3:-}" '
    /^#/ { next }
    { c = substr($0, length(n) + 1, 1) }
    substr($0, 1, length(n)) == n && (c == "{" || c == " ") && (f == "" || index($0, f)) { s += $NF }
    END { printf "%.0f\n", s }'
}
rss_mib() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024; f = 1 } END { if (!f) printf "-" }' "/proc/$1/status" 2>/dev/null || printf -- "-"; }

NATS_PORT=$(pick_port); NATS_MON=$(pick_port); PROM_PORT=$(pick_port); SINK_PORT=$(pick_port)
BROKER_M=$(pick_port); REDUCE_M=$(pick_port); AGG_M=$(pick_port); MIMIR_M=$(pick_port); LOKI_M=$(pick_port)
NATS=nats://127.0.0.1:$NATS_PORT
JS=jetstream://127.0.0.1:$NATS_PORT
SOCK=$WORK/dnstap.sock
COUNT=$((RATE * DURATION))

echo "== soak $(date -u +%FT%TZ) rev $(cd "$ROOT" && git describe --always --dirty) rate=$RATE/s duration=${DURATION}s count=$COUNT max_ack_pending=${SHIPPED_ACK_PENDING:+4096 (shipped default)}${SHIPPED_ACK_PENDING:-max_pending} cores=$(nproc) load=[$(cut -d' ' -f1-3 /proc/loadavg)]"

"$NATS_SERVER" -js -sd "$WORK/js" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON" >"$WORK/nats.log" 2>&1 &
started $! nats-server
wait_for nats-server 20 listening "$NATS_PORT"

printf 'global:\n  scrape_interval: 1h\n' >"$WORK/prometheus.yml"
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prometheus" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --web.enable-remote-write-receiver \
  >"$WORK/prometheus.log" 2>&1 &
started $! prometheus

# The Loki stand-in: answers every push 204 and counts requests and body bytes (GET /).
cat >"$WORK/sink.py" <<'PY'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    reqs = 0
    size = 0
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        H.reqs += 1
        H.size += n
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_GET(self):
        b = f"requests {H.reqs}\nbytes {H.size}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$WORK/sink.py" "$SINK_PORT" >"$WORK/sink.log" 2>&1 &
started $! loki-sink

cat >"$WORK/broker.toml" <<TOML
[inputs.soak]
url = "unix://$SOCK"

[outputs.nats]
url = "$NATS"
jetstream = true
stream = "DNSTAP"
stream_max_bytes = $STREAM_MAX_BYTES
TOML
"$REL/tapbus-broker" -c "$WORK/broker.toml" --metrics-listen "127.0.0.1:$BROKER_M" \
  >/dev/null 2>"$WORK/broker.log" &
started $! tapbus-broker
BROKER_PID=$!
wait_for "tapbus-broker" 20 test -S "$SOCK"
# The consumers wait for the stream DNSTAP (the broker makes it) with backoff.

# A holding consumer takes at most max_ack_pending messages per write (the server stops
# delivering there, below the runtime's max_pending): see SHIPPED_ACK_PENDING above.
map() { [ -n "${SHIPPED_ACK_PENDING:-}" ] || echo "&max_ack_pending=$1"; }
"$REL/tapbus-reduce" --input "$JS/DNSTAP?durable=reduce$(map 200000)" --output "$NATS" \
  --metrics-listen "127.0.0.1:$REDUCE_M" >/dev/null 2>"$WORK/reduce.log" &
started $! tapbus-reduce
REDUCE_PID=$!
"$REL/tapbus-aggregate" --input "$JS/DNSTAP?durable=aggregate$(map 20000)" --output "$NATS" --instance soak \
  --metrics-listen "127.0.0.1:$AGG_M" >/dev/null 2>"$WORK/aggregate.log" &
started $! tapbus-aggregate
AGG_PID=$!
"$REL/tapbus-mimir" --input "$NATS/tapbus.metrics.>" --url "http://127.0.0.1:$PROM_PORT/api/v1/write" \
  --metrics-listen "127.0.0.1:$MIMIR_M" >/dev/null 2>"$WORK/mimir.log" &
started $! tapbus-mimir
MIMIR_PID=$!
"$REL/tapbus-loki" --input "$JS/DNSTAP?durable=loki$(map 20000)" --url "http://127.0.0.1:$SINK_PORT/loki/api/v1/push" \
  --metrics-listen "127.0.0.1:$LOKI_M" >/dev/null 2>"$WORK/loki.log" &
started $! tapbus-loki
LOKI_PID=$!
wait_for prometheus 60 listening "$PROM_PORT"
for p in "$REDUCE_M" "$AGG_M" "$MIMIR_M" "$LOKI_M"; do wait_for "consumer on :$p" 30 healthy "$p"; done
wait_for loki-sink 10 listening "$SINK_PORT"

# Sampled every SAMPLE s (the sender, prometheus and the sink too, for reference).
NAMES_S=(tapbus-broker nats-server tapbus-reduce tapbus-aggregate tapbus-mimir tapbus-loki prometheus loki-sink)
pid_of() { local i; for ((i = 0; i < ${#NAMES[@]}; i++)); do [ "${NAMES[$i]}" = "$1" ] && echo "${PIDS[$i]}"; done; }
SAMPLES=$WORK/rss.tsv
printf '%8s' t_s
for n in "${NAMES_S[@]}"; do printf '%18s' "${n#tapbus-}"; done
printf '%12s %12s %10s\n' published reduce_held agg_held
T0=$(date +%s.%N)
sample() {
  local t n line=""
  t=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
  printf '%8s' "$t"
  for n in "${NAMES_S[@]}"; do
    local r
    r=$(rss_mib "$(pid_of "$n")")
    printf '%18s' "$r"
    line+="$t	$n	$r
"
  done
  printf '%12s %12s %10s\n' "$(metric "$BROKER_M" tapbus_published_total)" \
    "$(metric "$REDUCE_M" tapbus_consumer_pending)" "$(metric "$AGG_M" tapbus_consumer_pending)"
  printf '%s' "$line" >>"$SAMPLES"
}

"$REL/examples/fstrm_blast" --file "$CAPTURE" --count "$COUNT" --rate "$RATE" --unix "$SOCK" \
  >"$WORK/blast.json" 2>"$WORK/blast.log" &
BLAST_PID=$!
started "$BLAST_PID" fstrm_blast
BLAST_LIMIT=$((DURATION * 2 + 60))
sample
next=$SAMPLE
while kill -0 "$BLAST_PID" 2>/dev/null; do
  sleep 1
  el=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%d", b - a }')
  if [ "$el" -ge "$next" ]; then sample; next=$((next + SAMPLE)); fi
  [ "$el" -lt "$BLAST_LIMIT" ] || die "fstrm_blast still running after ${BLAST_LIMIT}s"
done
wait "$BLAST_PID" || die "fstrm_blast failed: $(cat "$WORK/blast.log")"
SENT_SECS=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')

# Settle: every consumer took everything the broker published (or SETTLE passed).
PUB=$(metric "$BROKER_M" tapbus_published_total)
done_all() {
  local p
  for p in "$REDUCE_M" "$AGG_M" "$LOKI_M"; do
    [ "$(metric "$p" tapbus_consumer_acked_total)" -ge "$PUB" ] || return 1
  done
}
t_settle=0
until done_all || [ "$t_settle" -ge "$SETTLE" ]; do
  sleep 1; t_settle=$((t_settle + 1))
  [ $((t_settle % SAMPLE)) -ne 0 ] || sample
done
sample
# The last aggregate batch (interval 10 s) through mimir into Prometheus.
prom_total() {
  http_get "$PROM_PORT" "/api/v1/query?query=sum(dnstap_messages_total%7Binstance%3D%22soak%22%7D)" |
    sed -n 's/.*"value":\[[0-9.]*,"\([0-9.e+]*\)"\].*/\1/p' | awk '{ printf "%.0f\n", $1 }'
}
for ((n = 0; n < 60; n++)); do
  [ "$(prom_total)" = "$(metric "$AGG_M" dnstap_messages_total)" ] && [ -n "$(prom_total)" ] && break
  sleep 1
done

echo
echo "== summary (RSS in MiB, after the ${WARMUP} s warm-up; growth = mean of the last minute - mean of the first minute after it)"
printf '%-18s %8s %8s %8s %10s %8s\n' process first min max growth samples
awk -F'\t' -v w="$WARMUP" '
  $3 != "-" && $1 >= w {
    n = $2; t = $1 + 0; v = $3 + 0
    if (!(n in min) || v < min[n]) min[n] = v
    if (!(n in max) || v > max[n]) max[n] = v
    if (!(n in first)) { first[n] = v; t0[n] = t }
    cnt[n]++; last_t[n] = t; vals[n, cnt[n]] = v; ts[n, cnt[n]] = t
    order[n] = order[n] ? order[n] : ++k; names[k] = n
  }
  END {
    for (i = 1; i <= k; i++) {
      n = names[i]; a = 0; an = 0; b = 0; bn = 0
      for (j = 1; j <= cnt[n]; j++) {
        if (ts[n, j] < t0[n] + 60) { a += vals[n, j]; an++ }
        if (ts[n, j] > last_t[n] - 60) { b += vals[n, j]; bn++ }
      }
      printf "%-18s %8.1f %8.1f %8.1f %+10.1f %8d\n", n, first[n], min[n], max[n], (bn ? b / bn : 0) - (an ? a / an : 0), cnt[n]
    }
  }' "$SAMPLES"

EV=$(metric "$BROKER_M" tapbus_events_total)
PUB=$(metric "$BROKER_M" tapbus_published_total)
DROP=$(metric "$BROKER_M" tapbus_dropped_total)
echo
echo "== events: sent $COUNT frames in ${SENT_SECS} s ($(cat "$WORK/blast.json" 2>/dev/null | sed -n 's/.*"frames_per_sec":\([0-9.]*\).*/\1/p') frames/s); broker events $EV, published $PUB, dropped $DROP"
printf '%-10s %12s %12s %10s %12s %10s %10s %12s\n' consumer received acked pending duplicates redeliv unsettled input_drops
for c in reduce:$REDUCE_M aggregate:$AGG_M mimir:$MIMIR_M loki:$LOKI_M; do
  p=${c#*:}
  printf '%-10s %12s %12s %10s %12s %10s %10s %12s\n' "${c%%:*}" \
    "$(metric "$p" tapbus_consumer_messages_total)" "$(metric "$p" tapbus_consumer_acked_total)" \
    "$(metric "$p" tapbus_consumer_pending)" "$(metric "$p" tapbus_consumer_duplicates_total)" \
    "$(metric "$p" tapbus_consumer_redelivered_total)" "$(metric "$p" tapbus_consumer_unsettled_total)" \
    "$(metric "$p" tapbus_consumer_input_dropped_total)"
done
AGG_COUNT=$(metric "$AGG_M" dnstap_messages_total)
PROM=$(prom_total)
LOKI_LINES=$(metric "$LOKI_M" tapbus_loki_pushed_lines_total)
SINK=$(http_get "$SINK_PORT" / | tr '\n' ' ')
echo "downstream: aggregate dnstap_messages_total $AGG_COUNT; Prometheus sum(dnstap_messages_total{instance=\"soak\"}) ${PROM:-none};" \
  "loki pushed lines $LOKI_LINES, dropped $(metric "$LOKI_M" tapbus_loki_dropped_lines_total) (sink: $SINK);" \
  "reduce events $(metric "$REDUCE_M" tapbus_reduce_events_total), records $(metric "$REDUCE_M" tapbus_reduce_records_total), late $(metric "$REDUCE_M" tapbus_reduce_late_total)"
LOST=0
for v in "$AGG_COUNT" "${PROM:-0}" "$LOKI_LINES"; do [ "$v" = "$PUB" ] || LOST=1; done
if [ "$DROP" = 0 ] && [ "$LOST" = 0 ]; then
  echo "losses: none (dropped 0; aggregate, Prometheus and loki each have every published event)"
else
  echo "losses: broker dropped $DROP; aggregate $((PUB - AGG_COUNT)), Prometheus $((PUB - ${PROM:-0})), loki $((PUB - LOKI_LINES)) short of published"
fi
echo "RESULT {\"rate\":$RATE,\"duration\":$DURATION,\"sent\":$COUNT,\"events\":$EV,\"published\":$PUB,\"dropped\":$DROP,\"aggregate\":$AGG_COUNT,\"prometheus\":${PROM:-null},\"loki_lines\":$LOKI_LINES}"
