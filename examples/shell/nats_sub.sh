#!/usr/bin/env bash
# Prints the tapbus events published on NATS, one line each: "<subject> <event JSON>".
#   examples/shell/nats_sub.sh [-s HOST:PORT] [-C COUNT] [SUBJECT]     (default 'dnstap.>')
# Debian has no NATS CLI package, and the NATS protocol is text: this is a complete
# subscriber in bash over /dev/tcp (no TLS, no auth, no reconnect). With the NATS CLI,
# `nats sub 'dnstap.>'` does the same. -C exits after COUNT events.
set -euo pipefail
export LC_ALL=C # payload sizes are bytes: read -N must count bytes, not characters
server=127.0.0.1:4222 count=0
while getopts 's:C:' o; do
  case $o in
    s) server=${OPTARG#nats://} ;; C) count=$OPTARG ;;
    *) sed -n '2,6s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
subject=${1:-dnstap.>}

exec 3<>"/dev/tcp/${server%:*}/${server##*:}"
IFS= read -r info <&3 # INFO {...}
[[ $info == INFO* ]] || { echo "not a NATS server: $info" >&2; exit 1; }
printf 'CONNECT {"verbose":false,"pedantic":false,"name":"nats_sub.sh"}\r\nSUB %s 1\r\nPING\r\n' \
  "$subject" >&3
n=0
while IFS= read -r line <&3; do
  line=${line%$'\r'}
  case $line in
    MSG\ *) # MSG <subject> <sid> [reply-to] <bytes>, then the payload and CRLF
      read -ra f <<<"$line"
      IFS= read -r -N "${f[-1]}" payload <&3
      IFS= read -r _ <&3 # the CRLF after the payload
      printf '%s %s\n' "${f[1]}" "$payload"
      n=$((n + 1))
      if [ "$count" -gt 0 ] && [ "$n" -ge "$count" ]; then exit 0; fi
      ;;
    PING) printf 'PONG\r\n' >&3 ;; # the server's keep-alive
    PONG) echo "subscribed to $subject on $server" >&2 ;; # our PING: SUB is in place
    -ERR*) echo "$line" >&2; exit 1 ;;
  esac
done
echo "connection closed after $n events" >&2
exit 1
