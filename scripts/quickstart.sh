#!/usr/bin/env bash
# Quick start: on a fresh Debian machine with nothing running, install what is missing,
# build tapbus, start nats-server and tapbus-broker, feed it real dnstap from a real DNS
# server (unbound answering dig queries, all on 127.0.0.1), and show the events arriving
# on NATS. Everything started here is stopped at the end (Ctrl-C stops it early).
#
#   scripts/quickstart.sh            # run the demo, then stop everything
#   KEEP=1 scripts/quickstart.sh     # leave nats-server and the broker running
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

scripts/install-test-deps.sh
echo "==> building tapbus (release)"
cargo build --release --locked -p tapbus-broker --bins --examples 2>&1 | tail -n 1

WORK=$(mktemp -d /tmp/tapbus-quickstart.XXXXXX)
PIDS=()
cleanup() {
  if [ -z "${KEEP:-}" ]; then
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
  else
    echo "left running (pids ${PIDS[*]}); logs in $WORK"
  fi
}
trap cleanup EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() { local p=$1; while ! port_free "$p"; do p=$((p + 1)); done; echo "$p"; }

NATS_PORT=$(pick_port 4222)
METRICS_PORT=$(pick_port 9634)
DNS_PORT=$(pick_port 5353)
SOCK=$WORK/dnstap.sock

echo "==> nats-server on 127.0.0.1:$NATS_PORT"
/usr/sbin/nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do port_free "$NATS_PORT" || break; sleep 0.1; done

echo "==> tapbus-broker: unix://$SOCK -> nats://127.0.0.1:$NATS_PORT"
target/release/tapbus-broker -i "unix://$SOCK" -o "nats://127.0.0.1:$NATS_PORT" \
  --metrics-listen "127.0.0.1:$METRICS_PORT" 2>"$WORK/broker.log" &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done

echo "==> subscriber: everything on dnstap.>"
target/release/examples/nats_tail "nats://127.0.0.1:$NATS_PORT" 'dnstap.>' 6 >"$WORK/events.jsonl" 2>/dev/null &
SUB=$!
PIDS+=($SUB)
sleep 0.5

echo "==> unbound on 127.0.0.1:$DNS_PORT, writing dnstap to the broker (local data only)"
cat >"$WORK/unbound.conf" <<CONF
server:
    interface: 127.0.0.1
    port: $DNS_PORT
    do-ip6: no
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "$WORK"
    pidfile: "$WORK/unbound.pid"
    use-syslog: no
    logfile: "$WORK/unbound.log"
    module-config: "iterator"
    do-not-query-localhost: no
    local-zone: "tapbus.test." static
    local-data: "www.tapbus.test. 300 IN A 192.0.2.10"
    local-data: "tapbus.test. 300 IN TXT \"hello from tapbus\""
stub-zone:
    name: "."
    stub-addr: 127.0.0.1@9
remote-control:
    control-enable: no
dnstap:
    dnstap-enable: yes
    dnstap-socket-path: "$SOCK"
    dnstap-send-identity: yes
    dnstap-identity: "quickstart"
    dnstap-log-client-query-messages: yes
    dnstap-log-client-response-messages: yes
CONF
/usr/sbin/unbound -d -c "$WORK/unbound.conf" 2>>"$WORK/unbound.log" &
PIDS+=($!)
sleep 1
for q in "www.tapbus.test A" "tapbus.test TXT" "nope.tapbus.test A"; do
  # shellcheck disable=SC2086
  echo "    dig $q -> $(dig @127.0.0.1 -p "$DNS_PORT" +short +tries=1 +time=2 $q | tr '\n' ' ')"
done

for _ in $(seq 50); do kill -0 "$SUB" 2>/dev/null || break; sleep 0.1; done
echo "==> events received on NATS (subject, then the JSON event):"
if command -v python3 >/dev/null 2>&1; then
  while read -r subject json; do
    echo "--- $subject"
    echo "$json" | python3 -m json.tool --compact | cut -c1-400
  done <"$WORK/events.jsonl"
else
  cut -c1-400 "$WORK/events.jsonl"
fi
echo "==> broker metrics (http://127.0.0.1:$METRICS_PORT/metrics):"
exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT"
printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
grep -E '^tapbus_(events|published|dropped)_total' <&3 || true
exec 3>&-
if [ -d testdata/dnstap ]; then
  echo "==> replaying a BIND capture with fstrm_replay: $(grep -c . testdata/dnstap/bind-resolver.fstrm.expected.jsonl) messages"
  fstrm_replay -t protobuf:dnstap.Dnstap -r testdata/dnstap/bind-resolver.fstrm -u "$SOCK"
  sleep 1
  exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT"
  printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
  grep -E '^tapbus_(events|published)_total' <&3 || true
  exec 3>&-
fi
echo "done: $ROOT/docs/broker.md explains inputs, outputs and subjects, $ROOT/docs/event.md the event."
