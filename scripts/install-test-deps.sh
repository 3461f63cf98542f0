#!/usr/bin/env bash
# Installs the Debian packages the tests and the quick start need, if they are missing:
#   nats-server  the bus the integration tests publish to
#   fstrm-bin    fstrm_replay / fstrm_capture, real Frame Streams senders and readers
#   unbound      a real DNS server writing dnstap in the integration tests
#   bind9-dnsutils  dig, to send it queries
#   redis-server the Redis output's integration tests
#   mosquitto, mosquitto-clients  the MQTT output's integration tests (server, mosquitto_sub)
# Nothing is started here; every test starts its own servers on free loopback ports.
set -euo pipefail

need=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
command -v fstrm_replay >/dev/null 2>&1 || need+=(fstrm-bin)
command -v unbound >/dev/null 2>&1 || [ -x /usr/sbin/unbound ] || need+=(unbound)
command -v dig >/dev/null 2>&1 || need+=(bind9-dnsutils)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need+=(redis-server)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${need[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "need root (or sudo) to apt-get install ${need[*]}" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts unbound as a service on install; the tests start their own on free ports.
if [[ " ${need[*]} " == *" unbound "* ]] && command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now unbound >/dev/null 2>&1 || true
fi
if [[ " ${need[*]} " == *" redis-server "* ]] && command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
if [[ " ${need[*]} " == *" mosquitto "* ]] && command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
