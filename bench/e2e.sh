#!/usr/bin/env bash
# End-to-end replay benchmark: fstrm_blast --Frame Streams--> tapbus-broker --JSON--> nats-server --> nats_count
#
# Usage: bench/e2e.sh [--output KIND] [--tcp] [--stdout] [--raw-sub] [--baseline] [--no-build] [--perf FILE] [--keep]
#   --output KIND  nats (default), jetstream, mqtt0, mqtt1, redis-publish, redis-list, redis-stream:
#                the script starts its own server on a free port (nats-server -js, mosquitto,
#                redis-server), writes a broker config file (-c) and counts what arrived
#                (JetStream: stream messages from /jsz; MQTT: mosquitto_sub lines; Redis:
#                redis-cli psubscribe, LLEN, XLEN)
#   --tcp        broker input tcp://127.0.0.1:PORT instead of unix:///TMP/dnstap.sock
#   --stdout     no NATS: broker output `stdout` into /dev/null (the ingest + encode ceiling);
#                the rate is then frames up to FINISH / time
#   --output dnstap-file  no bus: the raw output dnstap+file://TMP/rec.fstrm (record: the
#                frames are copied, never decoded); the rate is frames / time until every
#                frame was written to the file (published), polled every 0.05 s; the file's
#                data frames are counted at the end (fstrm_dump)
#   --raw-sub    cheaper subscriber, leaving more of the machine to the broker: for nats it
#                speaks the NATS protocol itself (nats_count --raw, ~3x less CPU than
#                async-nats); for redis-publish redis_count (RESP over one socket) replaces
#                redis-cli psubscribe
#   --baseline   also blast the same COUNT frames into fstrm_capture -w /dev/null (the floor)
#   --no-build   do not run cargo build (use the binaries already in target/release)
#   --perf FILE  record the broker with `perf record -g` during the run; report to FILE
#   --keep       keep the temporary directory (logs, metrics) and print its path
# Environment: COUNT (default 1000000), CAPTURE (default testdata/dnstap/bulk-100k.fstrm
#   relative to the repo root), IDLE_SECS (subscriber idle timeout, default 5),
#   RUN_TIMEOUT (seconds allowed for the blast and for the subscriber, default 300),
#   RATE (pace the sender at RATE frames/s; default 0 = as fast as possible),
#   TAPBUS_LOG (broker log filter, default warn), ACK_WINDOW (jetstream: the output's ack_window;
#   default: the broker's default), QUEUE (the output's queue size, --output kinds other than nats;
#   default: the broker's default, 16384).
#
# Prints a human summary and one final line `RESULT {json}`.
# Installs nothing. Every process it starts is stopped by PID on exit.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
COUNT=${COUNT:-1000000}
CAPTURE=${CAPTURE:-$ROOT/testdata/dnstap/bulk-100k.fstrm}
# The repository stores the bulk capture compressed; the tests unpack it beside the .gz.
if [ ! -f "$CAPTURE" ] && [ -f "$CAPTURE.gz" ]; then
  gunzip -c "$CAPTURE.gz" >"$CAPTURE.tmp.$$" && mv "$CAPTURE.tmp.$$" "$CAPTURE"
fi
IDLE_SECS=${IDLE_SECS:-5}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
RATE=${RATE:-0}
NATS_SERVER=${NATS_SERVER:-/usr/sbin/nats-server}
REL=${CARGO_TARGET_DIR:-$ROOT/target}/release

TRANSPORT=unix
BASELINE=0
BUILD=1
PERF_OUT=
KEEP=0
RAW=0
RAW_SUB=()
SUB_NAME=async-nats
OUTPUT=nats
while [ $# -gt 0 ]; do
    case "$1" in
    --tcp) TRANSPORT=tcp ;;
    --unix) TRANSPORT=unix ;;
    --baseline) BASELINE=1 ;;
    --no-build) BUILD=0 ;;
    --perf) PERF_OUT=${2:?--perf needs a file}; shift ;;
    --keep) KEEP=1 ;;
    --raw-sub) RAW=1 ;;
    --stdout) OUTPUT=stdout; SUB_NAME=none ;;
    --output)
        OUTPUT=${2:?--output needs a kind}; shift
        case "$OUTPUT" in
        nats | stdout) ;;
        dnstap-file) SUB_NAME=none ;;
        jetstream) SUB_NAME=jsz ;;
        mqtt0 | mqtt1) SUB_NAME=mosquitto_sub ;;
        redis-publish) SUB_NAME=redis-cli-psubscribe ;;
        redis-list) SUB_NAME=llen ;;
        redis-stream) SUB_NAME=xlen ;;
        *) echo "e2e.sh: unknown --output $OUTPUT" >&2; exit 2 ;;
        esac
        ;;
    -h | --help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "e2e.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
# --raw-sub: the cheaper subscriber, where there is one
if [ "$RAW" = 1 ]; then
    case "$OUTPUT" in
    nats) RAW_SUB=(--raw); SUB_NAME=raw ;;
    redis-publish) SUB_NAME=redis_count ;;
    esac
fi
# the subscriber stops by itself and writes count.json (nats_count, redis_count)
SELF_COUNTING=0
if [ "$OUTPUT" = nats ] || [ "$SUB_NAME" = redis_count ]; then SELF_COUNTING=1; fi

die() { echo "e2e.sh: $*" >&2; exit 1; }

# ---- prerequisites (nothing is installed) -------------------------------------------------
if [ ! -x "$NATS_SERVER" ]; then
    NATS_SERVER=$(command -v nats-server || true)
fi
if [ -z "$NATS_SERVER" ] || [ ! -x "$NATS_SERVER" ]; then
    echo "e2e.sh: nats-server not found; install it first: apt-get install -y nats-server" >&2
    exit 1
fi
case "$OUTPUT" in
mqtt*) for t in /usr/sbin/mosquitto mosquitto_sub; do command -v "$t" >/dev/null || die "$t is required (apt-get install -y mosquitto mosquitto-clients)"; done ;;
redis*) for t in redis-server redis-cli; do command -v "$t" >/dev/null || die "$t is required (apt-get install -y redis-server)"; done ;;
esac
for t in curl timeout getconf awk; do
    command -v "$t" >/dev/null || die "$t is required"
done
[ -r "$CAPTURE" ] || die "capture not found: $CAPTURE"
if [ -n "$PERF_OUT" ]; then
    command -v perf >/dev/null || die "--perf: perf is not installed (apt-get install -y linux-perf)"
fi
FSTRM_CAPTURE=
if [ "$BASELINE" = 1 ]; then
    FSTRM_CAPTURE=$(command -v fstrm_capture || true)
    [ -n "$FSTRM_CAPTURE" ] || echo "e2e.sh: --baseline: fstrm_capture not installed (apt-get install -y fstrm-bin); skipping the baseline" >&2
fi
CLK_TCK=$(getconf CLK_TCK)
# What was measured: the working tree (others may have uncommitted changes in it).
REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)

# ---- process bookkeeping ------------------------------------------------------------------
TMP=$(mktemp -d /tmp/tapbus-e2e.XXXXXX)
PIDS=()
cleanup() {
    local rc=$?
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        local p=${PIDS[i]}
        if kill -0 "$p" 2>/dev/null; then
            kill -TERM "$p" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$p" 2>/dev/null || true
        fi
        wait "$p" 2>/dev/null || true
    done
    if [ "$KEEP" = 1 ]; then
        echo "e2e.sh: kept $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$BUILD" = 1 ]; then
    echo "== building (release)" >&2
    (cd "$ROOT" && exec timeout 1800 cargo build --release -q -p tapbus-broker --examples --bins) &
    BUILD_PID=$!
    PIDS+=("$BUILD_PID")
    wait "$BUILD_PID" || die "build failed"
fi
for b in tapbus-broker examples/fstrm_blast examples/nats_count examples/redis_count; do
    [ -x "$REL/$b" ] || die "missing $REL/$b (run without --no-build)"
done
BUILT=$(date -u -r "$REL/tapbus-broker" +%FT%TZ 2>/dev/null || echo unknown)

# run CMD... in the background and wait for it: unlike a foreground command, `wait` is
# interrupted by SIGINT/SIGTERM, so the EXIT trap cleans up at once.
run_bg() {
    "$@" &
    local p=$!
    PIDS+=("$p")
    wait "$p"
}

# stop PID: SIGTERM, wait up to 10 s, then SIGKILL
stop() {
    local p=$1
    kill -TERM "$p" 2>/dev/null || return 0
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}

USED_PORTS=" "
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 40000))
        case "$USED_PORTS" in *" $p "*) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS="$USED_PORTS$p "
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}

# wait_until SECONDS CMD...: polls CMD every 0.05 s
wait_until() {
    local secs=$1; shift
    local end=$((SECONDS + secs))
    until "$@" 2>/dev/null; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.05
    done
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# CPU ticks (utime+stime) of a process; fields after the ")" of comm
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
vm_hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
vm_rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# read/write syscalls of a process: "syscr syscw"
io_calls() { awk '/^syscr:/ { r = $2 } /^syscw:/ { w = $2 } END { print r + 0, w + 0 }' "/proc/$1/io"; }
# voluntary + involuntary context switches summed over the threads
ctx_switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { s += $2 } END { print s + 0 }'; }
# machine-wide busy (non-idle, non-iowait) ticks, all CPUs
machine_busy() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# per-thread CPU ticks: "tid comm ticks" lines
thread_ticks() {
    local t
    for t in /proc/"$1"/task/*; do
        awk -v tid="${t##*/}" '{ c = $0; sub(/^[^(]*\(/, "", c); sub(/\).*$/, "", c); s = $0; sub(/^.*\) /, "", s); split(s, f, " "); print tid, c, f[12] + f[13] }' "$t/stat" 2>/dev/null || true
    done
}
# sum of a Prometheus counter family over all label sets
metric_sum() { awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $NF } END { printf "%d\n", s }' "$2"; }
json_num() { sed -n "s/.*\"$1\":\([0-9.eE+-]*\).*/\1/p" "$2" | head -n1; }
json_str() { sed -n "s/.*\"$1\":\"\{0,1\}\([a-z]*\)\"\{0,1\}.*/\1/p" "$2" | head -n1; }

echo "== $(date -u +%FT%TZ) $(uname -n) cores=$(nproc) count=$COUNT transport=$TRANSPORT load=[$(loadavg)]" >&2

# ---- the bus server -----------------------------------------------------------------------
NATS_PID=
CONFIG_ARGS=()
if [ "$OUTPUT" = jetstream ]; then
    NPORT=$(free_port)
    MONPORT=$(free_port)
    mkdir -p "$TMP/js"
    "$NATS_SERVER" -a 127.0.0.1 -p "$NPORT" -m "$MONPORT" -js -sd "$TMP/js" >"$TMP/nats.log" 2>&1 &
    NATS_PID=$!
    PIDS+=("$NATS_PID")
    wait_until 10 port_open "$NPORT" || { cat "$TMP/nats.log" >&2; die "nats-server did not start"; }
    BROKER_STDOUT="$TMP/broker.out"
    OUT_TOML="[outputs.nats]
url = \"nats://127.0.0.1:$NPORT\"
jetstream = true
stream = \"DNSTAP\"${ACK_WINDOW:+
ack_window = $ACK_WINDOW}"
elif [ "$OUTPUT" = mqtt0 ] || [ "$OUTPUT" = mqtt1 ]; then
    QPORT=$(free_port)
    # max_queued_messages 0: no limit on QoS 1 messages queued for a slow subscriber
    # (default 1000, beyond which mosquitto drops them silently)
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n' "$QPORT" >"$TMP/mosquitto.conf"
    /usr/sbin/mosquitto -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.log" 2>&1 &
    NATS_PID=$!
    PIDS+=("$NATS_PID")
    wait_until 10 port_open "$QPORT" || { cat "$TMP/mosquitto.log" >&2; die "mosquitto did not start"; }
    BROKER_STDOUT="$TMP/broker.out"
    OUT_TOML="[outputs.mqtt]
url = \"mqtt://127.0.0.1:$QPORT\"
qos = ${OUTPUT#mqtt}"
elif [ "${OUTPUT#redis-}" != "$OUTPUT" ]; then
    RPORT=$(free_port)
    # no output-buffer limit for the psubscribe counter (redis would disconnect a slow one)
    redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no \
        --client-output-buffer-limit "pubsub 0 0 0" >"$TMP/redis.log" 2>&1 &
    NATS_PID=$!
    PIDS+=("$NATS_PID")
    wait_until 10 port_open "$RPORT" || { cat "$TMP/redis.log" >&2; die "redis-server did not start"; }
    BROKER_STDOUT="$TMP/broker.out"
    # max_len above COUNT so that LLEN/XLEN count every event
    OUT_TOML="[outputs.redis]
url = \"redis://127.0.0.1:$RPORT/0\"
mode = \"${OUTPUT#redis-}\""
    [ "$OUTPUT" = redis-publish ] || OUT_TOML="$OUT_TOML
key = \"dnstap\"
max_len = $((COUNT * 2 + 100000))"
elif [ "$OUTPUT" = nats ]; then
    NPORT=$(free_port)
    MONPORT=$(free_port)
    "$NATS_SERVER" -a 127.0.0.1 -p "$NPORT" -m "$MONPORT" >"$TMP/nats.log" 2>&1 &
    NATS_PID=$!
    PIDS+=("$NATS_PID")
    wait_until 10 port_open "$NPORT" || { cat "$TMP/nats.log" >&2; die "nats-server did not start"; }
    OUT_URL="nats://127.0.0.1:$NPORT"
    BROKER_STDOUT="$TMP/broker.out"
elif [ "$OUTPUT" = dnstap-file ]; then
    OUT_URL="dnstap+file://$TMP/rec.fstrm${QUEUE:+?queue=$QUEUE}"
    BROKER_STDOUT=/dev/null
else
    OUT_URL=stdout
    BROKER_STDOUT=/dev/null
fi

# ---- broker -------------------------------------------------------------------------------
MPORT=$(free_port)
if [ "$TRANSPORT" = tcp ]; then
    IPORT=$(free_port)
    INPUT="tcp://127.0.0.1:$IPORT"
    BLAST_TARGET=(--tcp "127.0.0.1:$IPORT")
else
    SOCK="$TMP/dnstap.sock"
    INPUT="unix://$SOCK"
    BLAST_TARGET=(--unix "$SOCK")
fi
if [ -n "${OUT_TOML:-}" ] && [ -n "${QUEUE:-}" ]; then
    OUT_TOML="$OUT_TOML
queue = $QUEUE"
fi
if [ -n "${OUT_TOML:-}" ]; then
    printf '[inputs.bench]\nurl = "%s"\n\n%s\n' "$INPUT" "$OUT_TOML" >"$TMP/broker.toml"
    CONFIG_ARGS=(-c "$TMP/broker.toml")
else
    CONFIG_ARGS=(-i "$INPUT" -o "$OUT_URL")
fi
TAPBUS_LOG=${TAPBUS_LOG:-warn} "$REL/tapbus-broker" "${CONFIG_ARGS[@]}" \
    --metrics-listen "127.0.0.1:$MPORT" >"$BROKER_STDOUT" 2>"$TMP/broker.log" &
BROKER_PID=$!
PIDS+=("$BROKER_PID")
broker_ready() {
    curl -fsS -m 1 "http://127.0.0.1:$MPORT/metrics" -o "$TMP/m0.txt" &&
        grep -q 'tapbus_output_up{[^}]*} 1' "$TMP/m0.txt" &&
        if [ "$TRANSPORT" = tcp ]; then port_open "$IPORT"; else [ -S "$SOCK" ]; fi
}
wait_until 15 broker_ready || { cat "$TMP/broker.log" >&2; die "broker did not become ready (metrics, NATS connection, input)"; }

# ---- subscriber ---------------------------------------------------------------------------
COUNT_PID=
if [ "$OUTPUT" = nats ]; then
    timeout -k 5 "$((RUN_TIMEOUT + IDLE_SECS + 10))" "$REL/examples/nats_count" \
        --server "nats://127.0.0.1:$NPORT" --subject 'dnstap.>' --expect "$COUNT" \
        --idle-secs "$IDLE_SECS" --start-secs "$RUN_TIMEOUT" "${RAW_SUB[@]}" >"$TMP/count.json" 2>"$TMP/count.log" &
    COUNT_PID=$!
    PIDS+=("$COUNT_PID")
    wait_until 10 grep -q '^ready' "$TMP/count.log" || { cat "$TMP/count.log" >&2; die "subscriber not ready"; }
elif [ "$OUTPUT" = mqtt0 ] || [ "$OUTPUT" = mqtt1 ]; then
    # one "." line per message; QoS of the subscription = QoS of the output. No -C COUNT:
    # it runs until stopped, so that its CPU can be read at the end
    timeout -k 5 "$((RUN_TIMEOUT + IDLE_SECS + 10))" mosquitto_sub -h 127.0.0.1 -p "$QPORT" \
        -t 'dnstap/#' -q "${OUTPUT#mqtt}" -F . >"$TMP/sub.out" 2>"$TMP/count.log" &
    COUNT_PID=$!
    PIDS+=("$COUNT_PID")
    sleep 0.5
elif [ "$SUB_NAME" = redis_count ]; then
    timeout -k 5 "$((RUN_TIMEOUT + IDLE_SECS + 10))" "$REL/examples/redis_count" \
        --server "127.0.0.1:$RPORT" --pattern 'dnstap.*' --expect "$COUNT" \
        --idle-secs "$IDLE_SECS" --start-secs "$RUN_TIMEOUT" >"$TMP/count.json" 2>"$TMP/count.log" &
    COUNT_PID=$!
    PIDS+=("$COUNT_PID")
    wait_until 10 grep -q '^ready' "$TMP/count.log" || { cat "$TMP/count.log" >&2; die "subscriber not ready"; }
elif [ "$OUTPUT" = redis-publish ]; then
    # redis-cli prints 4 lines per message (pmessage, pattern, channel, payload)
    timeout -k 5 "$((RUN_TIMEOUT + IDLE_SECS + 10))" redis-cli -p "$RPORT" psubscribe 'dnstap.*' \
        >"$TMP/sub.out" 2>"$TMP/count.log" &
    COUNT_PID=$!
    PIDS+=("$COUNT_PID")
    wait_until 10 grep -q psubscribe "$TMP/sub.out" || die "redis-cli psubscribe not ready"
fi
# how many messages the bus holds / the subscriber got so far (not for nats, stdout)
bus_count() {
    case "$OUTPUT" in
    jetstream)
        curl -fsS -m 1 "http://127.0.0.1:$MONPORT/jsz?streams=true" 2>/dev/null |
            tr -d ' \n' | sed -n 's/.*"state":{"messages":\([0-9]*\).*/\1/p' | head -n1 ;;
    mqtt0 | mqtt1) wc -l <"$TMP/sub.out" ;;
    # counting lines of ~1 GB at every poll would cost a core: poll the size, count at the end
    redis-publish) stat -c %s "$TMP/sub.out" ;;
    redis-list) redis-cli -p "$RPORT" llen dnstap ;;
    redis-stream) redis-cli -p "$RPORT" xlen dnstap ;;
    esac
}

# ---- optional profiler --------------------------------------------------------------------
PERF_PID=
if [ -n "$PERF_OUT" ]; then
    perf record -F "${PERF_FREQ:-499}" --call-graph "${PERF_CALLGRAPH:-dwarf,32768}" -p "$BROKER_PID" -o "$TMP/perf.data" >"$TMP/perf.log" 2>&1 &
    PERF_PID=$!
    PIDS+=("$PERF_PID")
    sleep 0.5
fi

# ---- the run ------------------------------------------------------------------------------
LOAD_BEFORE=$(loadavg)
MB0=$(machine_busy)
T0=$(date +%s.%N)
B0=$(cpu_ticks "$BROKER_PID")
N0=0; [ -z "$NATS_PID" ] || N0=$(cpu_ticks "$NATS_PID")
thread_ticks "$BROKER_PID" >"$TMP/threads0.txt"
read -r SYSCR0 SYSCW0 <<<"$(io_calls "$BROKER_PID")"
CTX0=$(ctx_switches "$BROKER_PID")
# Sample the broker's RSS every 0.1 s (VmHWM gives the peak; this gives the shape).
(
    while kill -0 "$BROKER_PID" 2>/dev/null; do vm_rss_kib "$BROKER_PID" 2>/dev/null || true; sleep 0.1; done
) >"$TMP/rss.txt" &
PIDS+=("$!")
RSS_SAMPLER=$!

echo "== blasting $COUNT frames into $INPUT (rate: ${RATE:-0}/s, 0 = unpaced)" >&2
BLAST_RC=0
FINISH_SEEN=0
run_bg timeout -k 5 "$RUN_TIMEOUT" "$REL/examples/fstrm_blast" --file "$CAPTURE" --count "$COUNT" \
    --rate "$RATE" "${BLAST_TARGET[@]}" >"$TMP/blast.json" 2>"$TMP/blast.log" || BLAST_RC=$?
[ "$BLAST_RC" = 0 ] || { cat "$TMP/blast.log" >&2; echo "e2e.sh: fstrm_blast exited with $BLAST_RC" >&2; }

COUNT_RC=0
if [ "$SELF_COUNTING" = 0 ] && [ "$OUTPUT" != stdout ] && [ "$OUTPUT" != dnstap-file ]; then
    # Poll the bus until it holds COUNT messages or stops growing for IDLE_SECS after the
    # broker has published or dropped every event; the last arrival is when the count
    # last changed (poll every 0.05 s).
    LASTN=-1; LAST_CHANGE_NS=$(date +%s%N); IDLE_FROM=$SECONDS; DEADLINE=$((SECONDS + RUN_TIMEOUT))
    while [ $SECONDS -lt $DEADLINE ]; do
        N=$(bus_count); N=${N:-0}
        if [ "$N" != "$LASTN" ]; then LASTN=$N; LAST_CHANGE_NS=$(date +%s%N); IDLE_FROM=$SECONDS; fi
        [ "$OUTPUT" != redis-publish ] && [ "$N" -ge "$COUNT" ] && break
        if [ $((SECONDS - IDLE_FROM)) -ge "$IDLE_SECS" ]; then
            curl -fsS -m 1 "http://127.0.0.1:$MPORT/metrics" -o "$TMP/m1.txt" &&
                [ $(($(metric_sum tapbus_published_total "$TMP/m1.txt") + $(metric_sum tapbus_dropped_total "$TMP/m1.txt"))) -ge "$(metric_sum tapbus_events_total "$TMP/m1.txt")" ] &&
                [ "$FINISH_SEEN" = 1 ] && break
        fi
        [ -s "$TMP/blast.json" ] && FINISH_SEEN=1
        sleep 0.05
    done
    [ "$OUTPUT" != redis-publish ] ||
        LASTN=$(awk 'END { n = int((NR - 3) / 4); print (n > 0 ? n : 0) }' "$TMP/sub.out")
    SUB_TICKS=0
    if [ -n "$COUNT_PID" ]; then
        # COUNT_PID is timeout(1); its child is the subscriber
        SUB_CHILD=$({ cat "/proc/$COUNT_PID/task/$COUNT_PID/children" 2>/dev/null || true; } | awk '{ print $1 }')

        [ -z "$SUB_CHILD" ] || SUB_TICKS=$(cpu_ticks "$SUB_CHILD" 2>/dev/null || echo 0)
        stop "$COUNT_PID"
    fi
    S=$(json_num start_unix_ns "$TMP/blast.json")
    echo "{\"count\":$LASTN,\"bytes\":0,\"first_unix_ns\":${S:-0},\"last_unix_ns\":$LAST_CHANGE_NS,\"cpu_ticks\":$SUB_TICKS}" >"$TMP/count.json"
elif [ -n "$COUNT_PID" ]; then
    # The subscriber stops at COUNT messages or after IDLE_SECS without one.
    wait "$COUNT_PID" || COUNT_RC=$?
    [ "$COUNT_RC" = 0 ] || { cat "$TMP/count.log" >&2; echo "e2e.sh: $SUB_NAME subscriber exited with $COUNT_RC" >&2; }
else
    # stdout: wait until every decoded event is written or dropped (FINISH came after the
    # last frame was decoded), then use the blaster's time to FINISH as the wall time.
    drained() {
        curl -fsS -m 1 "http://127.0.0.1:$MPORT/metrics" -o "$TMP/m1.txt" &&
            [ $(($(metric_sum tapbus_published_total "$TMP/m1.txt") + $(metric_sum tapbus_dropped_total "$TMP/m1.txt"))) -ge "$(metric_sum tapbus_events_total "$TMP/m1.txt")" ]
    }
    wait_until 30 drained || echo "e2e.sh: $OUTPUT output not drained after 30 s" >&2
    DRAINED_NS=$(date +%s%N)
    S=$(json_num start_unix_ns "$TMP/blast.json"); F=$(json_num seconds_to_finish "$TMP/blast.json")
    P=$(metric_sum tapbus_published_total "$TMP/m1.txt")
    LAST=$(awk -v s="${S:-0}" -v f="${F:-0}" 'BEGIN { printf "%.0f", s + f * 1e9 }')
    # dnstap-file: until the last frame was written (the file output has no FINISH of its own)
    [ "$OUTPUT" != dnstap-file ] || LAST=$DRAINED_NS
    echo "{\"count\":$P,\"bytes\":0,\"first_unix_ns\":$S,\"last_unix_ns\":$LAST,\"cpu_ticks\":0}" >"$TMP/count.json"
fi
B1=$(cpu_ticks "$BROKER_PID")
N1=0; [ -z "$NATS_PID" ] || N1=$(cpu_ticks "$NATS_PID")
thread_ticks "$BROKER_PID" >"$TMP/threads1.txt"
read -r SYSCR1 SYSCW1 <<<"$(io_calls "$BROKER_PID")"
CTX1=$(ctx_switches "$BROKER_PID")
HWM_KIB=$(vm_hwm_kib "$BROKER_PID")
LOAD_AFTER=$(loadavg)
MB1=$(machine_busy)
T1=$(date +%s.%N)
if [ -n "$PERF_PID" ]; then
    kill -INT "$PERF_PID" 2>/dev/null || true
    timeout 30 tail --pid="$PERF_PID" -f /dev/null || true
fi
kill "$RSS_SAMPLER" 2>/dev/null || true
curl -fsS -m 5 "http://127.0.0.1:$MPORT/metrics" -o "$TMP/metrics.txt" || die "cannot read broker metrics"
if [ "$OUTPUT" = nats ]; then
    curl -fsS -m 5 "http://127.0.0.1:$MONPORT/varz" -o "$TMP/varz.json" || echo '{}' >"$TMP/varz.json"
else
    echo '{}' >"$TMP/varz.json"
fi

# ---- figures ------------------------------------------------------------------------------
case "$OUTPUT" in
mqtt*) BUS_NAME=mosquitto ;;
redis*) BUS_NAME=redis-server ;;
stdout | dnstap-file) BUS_NAME=none ;;
*) BUS_NAME=nats-server ;;
esac
SENT=$(json_num frames "$TMP/blast.json"); SENT=${SENT:-0}
BLAST_SECS=$(json_num seconds "$TMP/blast.json"); BLAST_SECS=${BLAST_SECS:-0}
BLAST_RATE=$(json_num frames_per_sec "$TMP/blast.json"); BLAST_RATE=${BLAST_RATE:-0}
START_NS=$(json_num start_unix_ns "$TMP/blast.json"); START_NS=${START_NS:-0}
FINISH=$(json_str finish "$TMP/blast.json"); FINISH=${FINISH:-false}
RECV=$(json_num count "$TMP/count.json"); RECV=${RECV:-0}
LAST_NS=$(json_num last_unix_ns "$TMP/count.json"); LAST_NS=${LAST_NS:-0}
SLOW=$(json_num slow_consumer_events "$TMP/count.json"); SLOW=${SLOW:-0}
BLAST_TICKS=$(json_num cpu_ticks "$TMP/blast.json"); BLAST_TICKS=${BLAST_TICKS:-0}
COUNT_TICKS=$(json_num cpu_ticks "$TMP/count.json"); COUNT_TICKS=${COUNT_TICKS:-0}
RECV_BYTES=$(json_num bytes "$TMP/count.json"); RECV_BYTES=${RECV_BYTES:-0}
EVENTS=$(metric_sum tapbus_events_total "$TMP/metrics.txt")
PUBLISHED=$(metric_sum tapbus_published_total "$TMP/metrics.txt")
DROPPED=$(metric_sum tapbus_dropped_total "$TMP/metrics.txt")
MALFORMED=$(metric_sum tapbus_malformed_total "$TMP/metrics.txt")
NATS_SLOW=$(sed -n 's/.*"slow_consumers": *\([0-9]*\).*/\1/p' "$TMP/varz.json" | head -n1)
NATS_SLOW=${NATS_SLOW:-?}
PEAK_SAMPLED_KIB=$(sort -n "$TMP/rss.txt" | tail -n1)

read -r WALL E2E_RATE CPU_S CPU_US CPU_US_PUB NATS_CPU_S HWM_MIB BLAST_CPU_S COUNT_CPU_S AVG_JSON <<EOF
$(awk -v s="$START_NS" -v l="$LAST_NS" -v r="$RECV" -v b0="$B0" -v b1="$B1" -v n0="$N0" -v n1="$N1" \
    -v tck="$CLK_TCK" -v ev="$EVENTS" -v pub="$PUBLISHED" -v hwm="$HWM_KIB" -v bt="$BLAST_TICKS" \
    -v ct="$COUNT_TICKS" -v rb="$RECV_BYTES" 'BEGIN {
        wall = (l > s && s > 0) ? (l - s) / 1e9 : 0
        rate = wall > 0 ? r / wall : 0
        cpu = (b1 - b0) / tck
        us = ev > 0 ? cpu * 1e6 / ev : 0
        usp = pub > 0 ? cpu * 1e6 / pub : 0
        printf "%.3f %.0f %.2f %.2f %.2f %.2f %.1f %.2f %.2f %.0f\n", wall, rate, cpu, us, usp,
            (n1 - n0) / tck, hwm / 1024, bt / tck, ct / tck, (r > 0 ? rb / r : 0) }')
EOF

# CPU used on the machine during the run by anything but the four processes measured
# here, in cores: the noise indicator (other builds, fuzzers...).
FOREIGN=$(awk -v m0="$MB0" -v m1="$MB1" -v t0="$T0" -v t1="$T1" -v tck="$CLK_TCK" -v ours="$CPU_S $NATS_CPU_S $BLAST_CPU_S $COUNT_CPU_S" 'BEGIN {
    split(ours, o, " "); own = o[1] + o[2] + o[3] + o[4]; el = t1 - t0
    f = el > 0 ? ((m1 - m0) / tck - own) / el : 0; if (f < 0) f = 0; printf "%.2f\n", f }')
echo
echo "tapbus e2e ($TRANSPORT -> $OUTPUT, subscriber: $SUB_NAME, rev $REV, binary built $BUILT, $(date -u +%FT%TZ), $(nproc) cores, load before/after: $LOAD_BEFORE / $LOAD_AFTER, other CPU use during the run: $FOREIGN cores)"
printf '  %-34s %s\n' \
    "sent (fstrm_blast)" "$SENT frames in ${BLAST_SECS}s = $BLAST_RATE frames/s, FINISH: $FINISH" \
    "events decoded (broker)" "$EVENTS" \
    "published (broker)" "$PUBLISHED" \
    "dropped (broker)" "$DROPPED" \
    "malformed (broker)" "$MALFORMED" \
    "received ($SUB_NAME)" "$RECV, avg $AVG_JSON B (client slow-consumer events: $SLOW; server slow consumers: $NATS_SLOW)" \
    "wall, first byte -> last message" "${WALL}s" \
    "end-to-end rate" "$E2E_RATE msg/s (received / wall)" \
    "broker CPU" "${CPU_S}s = ${CPU_US} µs/event decoded, ${CPU_US_PUB} µs/message published" \
    "broker write syscalls, ctx switches" "$((SYSCW1 - SYSCW0)) writes (to NATS), $((CTX1 - CTX0)) context switches" \
    "other CPU" "$BUS_NAME ${NATS_CPU_S}s, fstrm_blast ${BLAST_CPU_S}s, subscriber ($SUB_NAME) ${COUNT_CPU_S}s" \
    "broker peak RSS (VmHWM)" "$HWM_MIB MiB (sampled max $((${PEAK_SAMPLED_KIB:-0} / 1024)) MiB)"
echo "  broker threads (CPU seconds during the run):"
awk -v tck="$CLK_TCK" 'NR == FNR { a[$1] = $NF; next } { d = ($NF - a[$1]) / tck; if (d > 0.005) printf "    %-8s %-20s %.2f\n", $1, $2, d }' \
    "$TMP/threads0.txt" "$TMP/threads1.txt"

RESULT_OK=true
[ "$RECV" = "$COUNT" ] && [ "$DROPPED" = 0 ] && [ "$FINISH" = true ] || RESULT_OK=false
if [ "$OUTPUT" = dnstap-file ]; then
    # The recorded file's data frames (every published frame was written to the OS).
    FILE_FRAMES=$(python3 -c '
import struct, sys
b = open(sys.argv[1], "rb").read(); i = n = 0
while i + 4 <= len(b):
    (l,) = struct.unpack_from(">I", b, i); i += 4
    if l == 0:
        (c,) = struct.unpack_from(">I", b, i); i += 4 + c
    else:
        i += l; n += 1
print(n)' "$TMP/rec.fstrm")
    printf '  %-34s %s
' "data frames in the recorded file" "$FILE_FRAMES ($(stat -c %s "$TMP/rec.fstrm") bytes)"
    [ "$FILE_FRAMES" = "$PUBLISHED" ] || RESULT_OK=false
fi

# ---- optional baseline: fstrm_capture -w /dev/null ----------------------------------------
BASE_JSON=null
if [ -n "$FSTRM_CAPTURE" ]; then
    BSOCK="$TMP/capture.sock"
    "$FSTRM_CAPTURE" -t protobuf:dnstap.Dnstap -u "$BSOCK" -w /dev/null >"$TMP/capture.log" 2>&1 &
    CAP_PID=$!
    PIDS+=("$CAP_PID")
    wait_until 10 test -S "$BSOCK" || die "fstrm_capture did not start"
    C0=$(cpu_ticks "$CAP_PID")
    run_bg timeout -k 5 "$RUN_TIMEOUT" "$REL/examples/fstrm_blast" --file "$CAPTURE" --count "$COUNT" \
        --unix "$BSOCK" >"$TMP/base.json" 2>"$TMP/base.log" || cat "$TMP/base.log" >&2
    C1=$(cpu_ticks "$CAP_PID")
    CAP_HWM=$(vm_hwm_kib "$CAP_PID")
    stop "$CAP_PID"
    BS=$(json_num seconds_to_finish "$TMP/base.json"); BS=${BS:-0}
    read -r BRATE BCPU BUS <<EOF
$(awk -v n="$COUNT" -v s="$BS" -v c0="$C0" -v c1="$C1" -v tck="$CLK_TCK" 'BEGIN {
        printf "%.0f %.2f %.2f\n", (s > 0 ? n / s : 0), (c1 - c0) / tck, (c1 - c0) / tck * 1e6 / n }')
EOF
    echo "  baseline fstrm_capture -w /dev/null (unix): $COUNT frames to FINISH in ${BS}s = $BRATE frames/s, CPU ${BCPU}s = $BUS µs/frame, peak RSS $((CAP_HWM / 1024)) MiB"
    BASE_JSON="{\"seconds\":$BS,\"frames_per_sec\":$BRATE,\"cpu_s\":$BCPU,\"cpu_us_per_frame\":$BUS,\"rss_kib\":$CAP_HWM}"
fi

# ---- shut the broker down cleanly, check it exits -----------------------------------------
stop "$BROKER_PID"
if [ -n "$PERF_OUT" ] && [ -s "$TMP/perf.data" ]; then
    timeout 300 perf report -i "$TMP/perf.data" --stdio --no-children --percent-limit 0.5 \
        --sort symbol -g none >"$PERF_OUT" 2>/dev/null || true
    timeout 300 perf report -i "$TMP/perf.data" --stdio --children --percent-limit 2 \
        --sort symbol -g caller,0.5,callee,function,percent >"$PERF_OUT.callers" 2>/dev/null || true
    echo "  perf report: $PERF_OUT (and $PERF_OUT.callers)"
fi

echo "RESULT {\"date\":\"$(date -u +%FT%TZ)\",\"rev\":\"$REV\",\"built\":\"$BUILT\",\"transport\":\"$TRANSPORT\",\"output\":\"$OUTPUT\",\"subscriber\":\"$SUB_NAME\",\"count\":$COUNT,\"sent\":$SENT,\"received\":$RECV,\"events\":$EVENTS,\"published\":$PUBLISHED,\"dropped\":$DROPPED,\"wall_s\":$WALL,\"rate\":$RATE,\"msgs_per_sec\":$E2E_RATE,\"blast_frames_per_sec\":$BLAST_RATE,\"broker_cpu_s\":$CPU_S,\"broker_cpu_us_per_msg\":$CPU_US,\"broker_cpu_us_per_published\":$CPU_US_PUB,\"nats_cpu_s\":$NATS_CPU_S,\"blast_cpu_s\":$BLAST_CPU_S,\"count_cpu_s\":$COUNT_CPU_S,\"broker_peak_rss_mib\":$HWM_MIB,\"broker_writes\":$((SYSCW1 - SYSCW0)),\"broker_ctx_switches\":$((CTX1 - CTX0)),\"load_before\":\"$LOAD_BEFORE\",\"load_after\":\"$LOAD_AFTER\",\"foreign_cores\":$FOREIGN,\"ok\":$RESULT_OK,\"baseline\":$BASE_JSON}"
[ "$RESULT_OK" = true ]
