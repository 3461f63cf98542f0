#!/usr/bin/env bash
# Prints the tapbus events published on Redis, one line each: "<channel or key> <event JSON>".
#   examples/shell/redis_sub.sh [-u redis://HOST:PORT] [-p PATTERN] [-C COUNT]
#   examples/shell/redis_sub.sh -s KEY [-u URL] [-C COUNT]  # a stream (mode = "stream"):
#       prints it from the start, then follows it (XREAD BLOCK)
# Publish mode pattern-subscribes (PSUBSCRIBE, default 'dnstap.*'). Needs redis-cli
# (Debian: redis-tools). -C exits after COUNT events.
set -euo pipefail
url=redis://127.0.0.1:6379 pattern='dnstap.*' key='' count=0
while getopts 'u:p:s:C:' o; do
  case $o in
    u) url=$OPTARG ;; p) pattern=$OPTARG ;; s) key=$OPTARG ;; C) count=$OPTARG ;;
    *) sed -n '2,7s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
  esac
done
n=0
more() { n=$((n + 1)); [ "$count" -eq 0 ] || [ "$n" -lt "$count" ]; }

if [ -n "$key" ]; then
  # XREAD --raw prints the key, then three lines per entry: id, field ("data"), the JSON.
  last=0
  while :; do
    mapfile -t lines < <(redis-cli -u "$url" --raw XREAD COUNT 100 BLOCK 5000 STREAMS "$key" "$last")
    for ((i = 1; i + 2 < ${#lines[@]}; i += 3)); do
      last=${lines[i]}
      printf '%s %s\n' "$key" "${lines[i + 2]}"
      more || exit 0
    done
  done
fi

# PSUBSCRIBE --raw prints "psubscribe <pattern> 1" once the server has the subscription,
# then four lines per event: "pmessage", the pattern, the channel, the JSON.
exec 3< <(exec redis-cli -u "$url" --raw PSUBSCRIBE "$pattern")
pid=$!
trap 'kill "$pid" 2>/dev/null' EXIT
read -r _ <&3 && read -r _ <&3 && read -r _ <&3
echo "subscribed to $pattern on $url" >&2
while IFS= read -r _ <&3 && IFS= read -r _ <&3 && IFS= read -r channel <&3 \
  && IFS= read -r json <&3; do
  printf '%s %s\n' "$channel" "$json"
  more || exit 0
done
