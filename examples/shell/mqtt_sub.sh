#!/usr/bin/env bash
# Prints the tapbus events published on MQTT, one line each: "<topic> <event JSON>".
#   examples/shell/mqtt_sub.sh [-h HOST] [-p PORT] [-t TOPIC] [-C COUNT] [-W SECONDS]
#   examples/shell/mqtt_sub.sh -t 'dnstap/+/client_response' | cut -d' ' -f2- | jq -r .dns.qname
# It is mosquitto_sub (Debian: mosquitto-clients) with the tapbus defaults: -C exits after
# COUNT events, -W gives up after SECONDS (exit status 27).
set -euo pipefail
host=127.0.0.1 port=1883 topic='dnstap/#' opts=()
while getopts 'h:p:t:C:W:' o; do
  case $o in
    h) host=$OPTARG ;; p) port=$OPTARG ;; t) topic=$OPTARG ;;
    C) opts+=(-C "$OPTARG") ;; W) opts+=(-W "$OPTARG") ;;
    *) sed -n '2,6s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
  esac
done
exec mosquitto_sub -h "$host" -p "$port" -t "$topic" -v "${opts[@]}"
