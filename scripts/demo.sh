#!/usr/bin/env bash
# The whole pipeline on one machine, no Docker: the README's main command.
#
#   named-auth ----\                                  /-> tapbus-reduce    -> tapbus.reduced.* (stream REDUCED)
#   named-caching --+--dnstap--> tapbus-broker --> NATS (stream DNSTAP) -> tapbus-aggregate -> tapbus.metrics.* -> tapbus-mimir -> Prometheus
#   unbound -------/   (unix socket)                  \-> tapbus-loki      -> Loki (when LOKI_URL is set)
#        ^ dnsperf, on 127.0.0.1 only                  \-> tapbus-top in this terminal; your own subscribers
#
# On a fresh Debian machine it installs what is missing (apt-get), builds tapbus
# (release), starts everything above on free loopback ports in a temporary directory,
# sends a bounded stream of queries, shows the live result with tapbus-top, and stops
# everything it started (by PID) on q, Ctrl-C, SIGTERM or after DURATION seconds.
#
#   scripts/demo.sh                                  # 10 minutes at most; q or Ctrl-C ends it
#   DURATION=60 scripts/demo.sh                      # one minute
#   LOKI_URL=http://127.0.0.1:3100/loki/api/v1/push scripts/demo.sh   # also into a Loki
#
# Settings (environment):
#   DURATION       seconds until everything stops (default 600)
#   LOKI_URL       a Loki push URL; without it tapbus-loki is not started (said so)
#   QPS            queries per second per DNS server (default 50)
#   PASSES         passes over the query list per generator round (default 20); a round
#                  lasts 10 s at most
#   ROUNDS         generator rounds (default 0: until the end)
#   KEEP=1         keep the working directory (logs, TSDB) at the end
# For the tests and for tapbus developers:
#   DEMO_BIN     a directory with prebuilt tapbus binaries (no build)
#   DEMO_WORK      the working directory (kept; default: a new one under /tmp)
#   DEMO_NO_INSTALL=1  install nothing
#   DEMO_TOP=0     no tapbus-top even on a terminal (status lines instead)
#   DEMO_IDLE_FLUSH, DEMO_INTERVAL  tapbus-reduce's idle_flush (15s), tapbus-aggregate's
#                  interval (5s)
# What it writes into the working directory: ports.env (every address), pids (every
# process started), traffic/*.txt (dnsperf's reports), traffic.done (when ROUNDS ended),
# one log per process.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-600}
QPS=${QPS:-50}
PASSES=${PASSES:-20}
ROUNDS=${ROUNDS:-0}
LOKI_URL=${LOKI_URL:-}
say() { printf '==> %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }
case "$DURATION$QPS$PASSES$ROUNDS" in *[!0-9]*) die "DURATION, QPS, PASSES and ROUNDS are whole numbers" ;; esac

# --- what is needed ----------------------------------------------------------------------
if [ -z "${DEMO_NO_INSTALL:-}" ]; then
  need=()
  [ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
  [ -x /usr/sbin/named ] || command -v named >/dev/null 2>&1 || need+=(bind9)
  [ -x /usr/sbin/unbound ] || command -v unbound >/dev/null 2>&1 || need+=(unbound)
  command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
  command -v dnsperf >/dev/null 2>&1 || need+=(dnsperf)
  command -v dig >/dev/null 2>&1 || need+=(bind9-dnsutils)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  [ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
  command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
  if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
      command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to apt-get install ${need[*]}"
      SUDO=sudo
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # Debian starts these as services on install; the demo runs its own on free ports.
    for s in named unbound prometheus nats-server mosquitto; do
      command -v systemctl >/dev/null 2>&1 && $SUDO systemctl disable --now "$s" >/dev/null 2>&1 || true
    done
  fi
fi
NATS_SERVER=$(command -v nats-server || echo /usr/sbin/nats-server)
NAMED=$(command -v named || echo /usr/sbin/named)
UNBOUND=$(command -v unbound || echo /usr/sbin/unbound)
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
for p in "$NATS_SERVER" "$NAMED" "$UNBOUND" "$MOSQUITTO" prometheus dnsperf python3 dig; do
  command -v "$p" >/dev/null 2>&1 || die "$p is missing (run without DEMO_NO_INSTALL)"
done

BINS=(tapbus-broker tapbus-reduce tapbus-aggregate tapbus-mimir tapbus-loki tapbus-top tapbus-tail)
if [ -n "${DEMO_BIN:-}" ]; then
  BIN=$(cd "$DEMO_BIN" && pwd)
else
  say "building tapbus (release; the first build takes a few minutes)"
  args=()
  for b in "${BINS[@]}"; do args+=(-p "$b"); done
  cargo build --release --locked "${args[@]}" --bins 2>&1 | tail -n 1
  BIN=$ROOT/target/release
fi
for b in "${BINS[@]}"; do [ -x "$BIN/$b" ] || die "$BIN/$b is missing"; done

# --- the working directory, and stopping everything --------------------------------------
if [ -n "${DEMO_WORK:-}" ]; then
  WORK=$DEMO_WORK; KEEP=1; mkdir -p "$WORK"
else
  WORK=$(mktemp -d /tmp/tapbus-demo.XXXXXX)
fi
: >"$WORK/pids"
PIDS=()
NAMES=()
STOPPING=""
READY=""
SLEEPER=""
started() { PIDS+=("$1"); NAMES+=("$2"); echo "$1 $2" >>"$WORK/pids"; }
# Stops what was started, newest first: the query generator and the DNS servers, then the
# broker, then the consumers (SIGTERM: they push what they hold, ack, exit), then
# Prometheus and NATS. Each gets 15 s before SIGKILL.
cleanup() {
  local rc=$?
  [ -n "$STOPPING" ] && return
  STOPPING=1
  trap '' INT TERM HUP
  [ -n "$SLEEPER" ] && kill "$SLEEPER" 2>/dev/null
  if [ -n "$READY" ]; then
    say "what reached the stores:"
    summary
  fi
  [ ${#PIDS[@]} -gt 0 ] && say "stopping ${#PIDS[@]} processes"
  local i p n
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    p=${PIDS[$i]}
    kill -TERM "$p" 2>/dev/null || continue
    for ((n = 0; n < 150; n++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then
      echo "demo: ${NAMES[$i]} ($p) did not stop in 15 s: SIGKILL" >&2
      kill -KILL "$p" 2>/dev/null || true
    fi
    wait "$p" 2>/dev/null || true
  done
  if [ -n "${KEEP:-}" ]; then
    echo "logs and data kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 0' INT TERM HUP

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
TAKEN=" "
pick_port() {
  local p=$1
  while [[ "$TAKEN" == *" $p "* ]] || ! port_free "$p"; do p=$((p + 1)); done
  TAKEN+="$p "
  echo "$p"
}
# GET http://127.0.0.1:PORT/PATH: the body (empty when it fails).
http_get() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3 \
    && sed '1,/^\r$/d' <&3) 2>/dev/null || true
}
wait_for() { # what seconds command...
  local what=$1 secs=$2 n
  shift 2
  for ((n = 0; n < secs * 10; n++)); do "$@" && return 0; sleep 0.1; done
  die "$what did not come up in ${secs}s (logs in $WORK)"
}
listening() { ! port_free "$1"; }
healthy() { [ -n "$(http_get "$1" /health)" ]; }

NATS_PORT=$(pick_port 4222)
NATS_MON=$(pick_port 8222)
BROKER_METRICS=$(pick_port 9634)
AGG_METRICS=$(pick_port 9635)
REDUCE_METRICS=$(pick_port 9636)
MIMIR_METRICS=$(pick_port 9637)
LOKI_METRICS=$(pick_port 9638)
LOKI_REDUCED_METRICS=$(pick_port 9639)
PROM_PORT=$(pick_port 9090)
MQTT_PORT=$(pick_port 1883)
COREDNS_PORT=$(pick_port 6000)
AUTH_PORT=$(pick_port 5301)
CACHE_PORT=$(pick_port 5302)
UNBOUND_PORT=$(pick_port 5303)
SOCK=$WORK/dnstap.sock
NATS=nats://127.0.0.1:$NATS_PORT
JS=jetstream://127.0.0.1:$NATS_PORT
mkdir -p "$WORK/traffic"
rm -f "$WORK/traffic.done" "$WORK/ports.env"

# Everything the consumers read comes from compose/config (what the compose stack runs),
# the addresses moved to loopback through TAPBUS_* as a deployment would.
CFG=$ROOT/compose/config
export TAPBUS_LOG=${TAPBUS_LOG:-info}

say "nats-server with JetStream on 127.0.0.1:$NATS_PORT"
"$NATS_SERVER" -js -sd "$WORK/jetstream" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON" \
  >"$WORK/nats.log" 2>&1 &
started $! nats-server
wait_for nats-server 20 listening "$NATS_PORT"

say "mosquitto on 127.0.0.1:$MQTT_PORT (a second broker output, for mosquitto_sub)"
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$MQTT_PORT" >"$WORK/mosquitto.conf"
"$MOSQUITTO" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
started $! mosquitto
wait_for mosquitto 20 listening "$MQTT_PORT"

say "prometheus on 127.0.0.1:$PROM_PORT (remote-write receiver; scrapes the pipeline's /metrics)"
cat >"$WORK/prometheus.yml" <<YML
global:
  scrape_interval: 5s
  evaluation_interval: 5s
scrape_configs:
  - job_name: tapbus
    static_configs:
      - targets: ["127.0.0.1:$BROKER_METRICS", "127.0.0.1:$REDUCE_METRICS", "127.0.0.1:$AGG_METRICS", "127.0.0.1:$MIMIR_METRICS", "127.0.0.1:$LOKI_METRICS", "127.0.0.1:$LOKI_REDUCED_METRICS"]
    metric_relabel_configs:
      - source_labels: [__name__]
        regex: "tapbus_.*"
        action: keep
YML
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prometheus" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --web.enable-remote-write-receiver \
  >"$WORK/prometheus.log" 2>&1 &
started $! prometheus

say "tapbus-broker: unix://$SOCK -> $NATS (stream DNSTAP) and mqtt://127.0.0.1:$MQTT_PORT"
TAPBUS_INPUTS__NAMED__URL="unix://$SOCK" \
TAPBUS_INPUTS__NAMED__SOCKET_GROUP="$(id -g)" \
TAPBUS_INPUTS__COREDNS__URL="tcp://127.0.0.1:$COREDNS_PORT" \
TAPBUS_OUTPUTS__NATS__URL="$NATS" \
TAPBUS_OUTPUTS__NATS__STREAM_MAX_BYTES=268435456 \
TAPBUS_OUTPUTS__MQTT__URL="mqtt://127.0.0.1:$MQTT_PORT" \
TAPBUS_METRICS_LISTEN="127.0.0.1:$BROKER_METRICS" \
  "$BIN/tapbus-broker" --config "$CFG/broker.toml" >/dev/null 2>"$WORK/broker.log" &
started $! tapbus-broker
wait_for "the broker's socket" 30 test -S "$SOCK"
jsz_has() { http_get "$NATS_MON" '/jsz?streams=true' | grep -q "\"name\": *\"$1\""; }
wait_for "the DNSTAP stream" 30 jsz_has DNSTAP

say "tapbus-reduce: DNSTAP -> tapbus.reduced.* (stream REDUCED)"
TAPBUS_INPUT__URL="$JS/DNSTAP?durable=reduce" \
TAPBUS_OUTPUT__URL="$NATS" \
TAPBUS_IDLE_FLUSH="${DEMO_IDLE_FLUSH:-15s}" \
TAPBUS_METRICS_LISTEN="127.0.0.1:$REDUCE_METRICS" \
  "$BIN/tapbus-reduce" --config "$CFG/reduce.toml" >/dev/null 2>"$WORK/reduce.log" &
started $! tapbus-reduce

say "tapbus-aggregate: DNSTAP -> tapbus.metrics.demo and /metrics"
TAPBUS_INPUT__URL="$JS/DNSTAP?durable=aggregate" \
TAPBUS_OUTPUT__URL="$NATS" \
TAPBUS_AGGREGATE__INSTANCE=demo \
TAPBUS_AGGREGATE__INTERVAL="${DEMO_INTERVAL:-5s}" \
TAPBUS_METRICS_LISTEN="127.0.0.1:$AGG_METRICS" \
  "$BIN/tapbus-aggregate" --config "$CFG/aggregate.toml" >/dev/null 2>"$WORK/aggregate.log" &
started $! tapbus-aggregate

say "tapbus-mimir: tapbus.metrics.> -> http://127.0.0.1:$PROM_PORT/api/v1/write"
TAPBUS_INPUT__URL="$NATS/tapbus.metrics.>" \
TAPBUS_URL="http://127.0.0.1:$PROM_PORT/api/v1/write" \
TAPBUS_METRICS_LISTEN="127.0.0.1:$MIMIR_METRICS" \
  "$BIN/tapbus-mimir" --config "$CFG/mimir.toml" >/dev/null 2>"$WORK/mimir.log" &
started $! tapbus-mimir

wait_for "the REDUCED stream" 30 jsz_has REDUCED
if [ -n "$LOKI_URL" ]; then
  say "tapbus-loki (two): DNSTAP and REDUCED -> $LOKI_URL"
  for s in DNSTAP REDUCED; do
    m=$LOKI_METRICS conf=loki.toml
    [ "$s" = REDUCED ] && m=$LOKI_REDUCED_METRICS conf=loki-reduced.toml
    TAPBUS_INPUT__URL="$JS/$s?durable=loki" \
    TAPBUS_URL="$LOKI_URL" \
    TAPBUS_METRICS_LISTEN="127.0.0.1:$m" \
      "$BIN/tapbus-loki" --config "$CFG/$conf" >/dev/null 2>"$WORK/loki-${s,,}.log" &
    started $! "tapbus-loki-${s,,}"
  done
else
  say "tapbus-loki: skipped (no Loki here; set LOKI_URL=http://HOST:3100/loki/api/v1/push to push logs)"
fi
wait_for prometheus 60 listening "$PROM_PORT"
for m in "$REDUCE_METRICS" "$AGG_METRICS" "$MIMIR_METRICS"; do wait_for "the consumer on :$m" 30 healthy "$m"; done
[ -z "$LOKI_URL" ] || for m in "$LOKI_METRICS" "$LOKI_REDUCED_METRICS"; do wait_for "tapbus-loki on :$m" 30 healthy "$m"; done

# --- the DNS servers: named/ and unbound/ as shipped, moved to loopback ------------------
# The lines of named/*.conf marked "rewritten by the tests" are what a deployment
# changes: directories, the listening port (loopback only, and every query named sends
# leaves from 127.0.0.1), the dnstap socket, the caching role's forwarder (the loopback
# authoritative server only).
rewrite_named() { # conf dir port
  sed -e "/rewritten by the tests/{
s|directory \"[^\"]*\";|directory \"$2\";|
s|pid-file \"[^\"]*\";|pid-file \"$2/named.pid\";|
s|session-keyfile \"[^\"]*\";|session-keyfile \"$2/session.key\";|
s|listen-on port 53 { any; };|listen-on port $3 { 127.0.0.1; }; query-source address 127.0.0.1;|
s|dnstap-output unix \"[^\"]*\";|dnstap-output unix \"$SOCK\";|
s|forwarders { [^}]*};|forwarders { 127.0.0.1 port $AUTH_PORT; };|
s|file \"/etc/bind/zones/|file \"$ROOT/named/zones/|
}" "$ROOT/named/$1"
}
for role in auth caching; do
  port=$AUTH_PORT; [ $role = caching ] && port=$CACHE_PORT
  mkdir -p "$WORK/named-$role"
  rewrite_named "named.$role.conf" "$WORK/named-$role" "$port" >"$WORK/named-$role/named.conf"
  sed 's|//.*||' "$WORK/named-$role/named.conf" | grep -q 'forwarders {[^}]*172\.\|/etc/bind\|/run/\|/var/' \
    && die "named.$role.conf: a line was not moved to loopback"
  say "named ($role) on 127.0.0.1:$port, dnstap to the broker"
  "$NAMED" -g -4 -n 1 -c "$WORK/named-$role/named.conf" >"$WORK/named-$role.log" 2>&1 &
  started $! "named-$role"
done
mkdir -p "$WORK/unbound"
sed -e "s|^\( *port:\).*|\1 $UNBOUND_PORT|" \
    -e "s|^\( *directory:\).*|\1 \"$WORK/unbound\"|" \
    -e "s|^\( *dnstap-socket-path:\).*|\1 \"$SOCK\"|" \
    "$ROOT/unbound/unbound.conf" >"$WORK/unbound/unbound.conf"
say "unbound on 127.0.0.1:$UNBOUND_PORT (local data), dnstap to the broker"
"$UNBOUND" -d -c "$WORK/unbound/unbound.conf" >"$WORK/unbound.log" 2>&1 &
started $! unbound
answers() { dig @127.0.0.1 -p "$1" +tries=1 +time=1 tapbus.test SOA 2>/dev/null | grep -q 'status: NOERROR'; }
for p in "$AUTH_PORT" "$CACHE_PORT" "$UNBOUND_PORT"; do wait_for "the DNS server on :$p" 60 answers "$p"; done
connections() { http_get "$BROKER_METRICS" /metrics | awk '/^tapbus_connections_active/ {s += $NF} END {exit !(s >= 3)}'; }
wait_for "three dnstap connections" 30 connections

cat >"$WORK/ports.env" <<ENV
NATS_PORT=$NATS_PORT
NATS_MONITOR_PORT=$NATS_MON
PROMETHEUS_PORT=$PROM_PORT
BROKER_METRICS_PORT=$BROKER_METRICS
REDUCE_METRICS_PORT=$REDUCE_METRICS
AGGREGATE_METRICS_PORT=$AGG_METRICS
MIMIR_METRICS_PORT=$MIMIR_METRICS
LOKI_METRICS_PORT=$LOKI_METRICS
NAMED_AUTH_PORT=$AUTH_PORT
NAMED_CACHING_PORT=$CACHE_PORT
UNBOUND_PORT=$UNBOUND_PORT
MQTT_PORT=$MQTT_PORT
COREDNS_DNSTAP_PORT=$COREDNS_PORT
ENV

# --- the query generator: dnsperf, bounded in rate, passes and time ----------------------
cat >"$WORK/traffic/named-caching.queries" <<Q
www.tapbus.test A
www.tapbus.test AAAA
api.tapbus.test A
tapbus.test MX
tapbus.test TXT
_sip._udp.tapbus.test SRV
nx.tapbus.test A
25.2.0.192.in-addr.arpa PTR
outside.example A
Q
cat >"$WORK/traffic/unbound.queries" <<Q
www.tapbus.test A
www.tapbus.test AAAA
mail.tapbus.test A
tapbus.test MX
nx.tapbus.test A
missing.tapbus.test AAAA
10.2.0.192.in-addr.arpa PTR
Q
# One round: per server, PASSES over its list over UDP at QPS, and one pass over TCP.
traffic() {
  local round=0 s port
  trap 'kill $(jobs -p) 2>/dev/null; exit 0' TERM
  while [ "$ROUNDS" -eq 0 ] || [ "$round" -lt "$ROUNDS" ]; do
    round=$((round + 1))
    for s in named-caching unbound; do
      port=$CACHE_PORT; [ $s = unbound ] && port=$UNBOUND_PORT
      dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/traffic/$s.queries" -n "$PASSES" -Q "$QPS" \
        -l 10 -t 2 >"$WORK/traffic/$s-$round-udp.txt" 2>&1 &
      dnsperf -m tcp -s 127.0.0.1 -p "$port" -d "$WORK/traffic/$s.queries" -n 1 -Q "$QPS" \
        -l 10 -t 2 >"$WORK/traffic/$s-$round-tcp.txt" 2>&1 &
    done
    wait || true
  done
  touch "$WORK/traffic.done"
}
say "dnsperf: $QPS queries/s per server, UDP and TCP$([ "$ROUNDS" -gt 0 ] && echo ", $ROUNDS round(s)")"
traffic &
started $! traffic

cat <<TXT
==> the pipeline is running (for ${DURATION}s at most; logs in $WORK). Attach your own subscriber:
    $BIN/tapbus-tail --input $NATS --filter 'operation=CLIENT_RESPONSE rcode=NXDOMAIN'
    $BIN/tapbus-tail --input '$JS/REDUCED?durable=me' --json --count 5
    mosquitto_sub -h 127.0.0.1 -p $MQTT_PORT -t 'dnstap/+/client_response' -C 3
    nats sub --server $NATS 'dnstap.>'          (the NATS CLI, if installed)
    python3 examples/python/nats_subscribe.py --url $NATS --subject 'dnstap.>'   (pip install -r examples/python/requirements.txt)
    Prometheus: http://127.0.0.1:$PROM_PORT/graph?g0.expr=sum%20by%20(identity%2C%20operation)%20(rate(dnstap_messages_total%5B1m%5D))
    CoreDNS can join: dnstap tcp://127.0.0.1:$COREDNS_PORT full   (coredns/Corefile)
TXT

# --- the foreground: tapbus-top on a terminal, else a status line every 10 s -------------
summary() {
  python3 - "$PROM_PORT" "$NATS_MON" <<'PY' || true
import json, sys, urllib.parse, urllib.request
prom, mon = sys.argv[1], sys.argv[2]
def get(url):
    with urllib.request.urlopen(url, timeout=3) as r:
        return json.load(r)
q = "sum by (identity, operation) (dnstap_messages_total)"
try:
    res = get(f"http://127.0.0.1:{prom}/api/v1/query?query=" + urllib.parse.quote(q))["data"]["result"]
except Exception as e:
    res = []
    print(f"    prometheus: {e}")
for r in sorted(res, key=lambda r: (r["metric"].get("identity", ""), r["metric"].get("operation", ""))):
    m = r["metric"]
    print(f"    prometheus {m.get('identity', '?'):14} {m.get('operation', '?'):18} {int(float(r['value'][1])):>9}")
try:
    for a in get(f"http://127.0.0.1:{mon}/jsz?streams=true").get("account_details", []):
        for s in a.get("stream_detail", []):
            print(f"    stream {s['name']:8} {s['state']['messages']:>9} messages")
except Exception as e:
    print(f"    jetstream: {e}")
PY
}
READY=1
if [ "${DEMO_TOP:-1}" != 0 ] && [ -t 0 ] && [ -t 1 ]; then
  sleep 2
  "$BIN/tapbus-top" --input "$NATS" --broker-metrics "http://127.0.0.1:$BROKER_METRICS/metrics" \
    --duration "${DURATION}s" --log-file "$WORK/top.log" || true
  clear 2>/dev/null || true
else
  end=$((SECONDS + DURATION))
  while [ "$SECONDS" -lt "$end" ]; do
    sleep 10 &
    SLEEPER=$!
    wait "$SLEEPER" || true
    SLEEPER=""
    events=$(http_get "$BROKER_METRICS" /metrics | awk '/^tapbus_events_total/ {s += $NF} END {printf "%d", s}')
    say "$(date +%T) broker events: $events"
  done
fi
