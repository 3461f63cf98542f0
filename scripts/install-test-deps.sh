#!/usr/bin/env bash
# Installs the Debian packages the tests and the quick start need, if they are missing:
#   nats-server  the bus the integration tests publish to
#   fstrm-bin    fstrm_replay / fstrm_capture / fstrm_dump, real Frame Streams senders and readers
#   golang-github-dnstap-golang-dnstap-cli  golang-dnstap's `dnstap`, which reads the raw
#                dnstap+file output's captures back (`dnstap -r FILE -j`) in broker/tests/it/raw.rs
#   unbound      a real DNS server writing dnstap in the integration tests
#   nsd          NSD, an authoritative server writing dnstap (broker/tests/it/dns_server.rs)
#   bind9        BIND named, run with named/'s authoritative and caching configs by
#                compose/tests (deploy tests)
#   bind9-dnsutils  dig, to send it queries
#   redis-server the Redis output's integration tests
#   mosquitto, mosquitto-clients  the MQTT output's integration tests (server, mosquitto_sub)
#   redis-tools  redis-cli, for examples/shell/redis_sub.sh
#   tmux         a real terminal for tapbus-top's integration test
#   python3-venv a venv at target/py-venv with examples/python/requirements.txt (from PyPI),
#                for the Python subscribers in examples/python that the tests run
#   prometheus   the metrics store the mimir and dashboard tests fill and query
#   dnsperf      the query generator of scripts/demo.sh, which compose/tests runs end to end
#   nodejs, npm  Grafana's LogQL grammar (@grafana/lezer-logql, pinned, from npm) in
#                target/node_modules, which grafana/tests/logql-parse.cjs drives to parse
#                every LogQL expression of the dashboards
#   libssl-dev, pkg-config  building openssl-sys: rumqttc's native-tls backend, the TLS of
#                mqtts:// (docs/supply-chain.md)
#   dpkg-dev     dpkg-shlibdeps, which cargo-deb runs for the package's Depends
#                (scripts/package.sh, run by compose/tests' package test)
#   systemd      systemd-analyze verify on the package's units
#   curl, adduser, passwd  the package's health wait and maintainer scripts; gpasswd
#   libmaxmind-db-writer-perl  MaxMind::DB::Writer, which tapbus-enrich's testutil runs to
#                write the GeoIP City/ASN test databases (enrich/src/testutil.rs)
# Nothing is started here; every test starts its own servers on free loopback ports.
set -euo pipefail

need=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
command -v fstrm_replay >/dev/null 2>&1 || need+=(fstrm-bin)
command -v dnstap >/dev/null 2>&1 || need+=(golang-github-dnstap-golang-dnstap-cli)
command -v unbound >/dev/null 2>&1 || [ -x /usr/sbin/unbound ] || need+=(unbound)
command -v named >/dev/null 2>&1 || [ -x /usr/sbin/named ] || need+=(bind9)
command -v nsd >/dev/null 2>&1 || [ -x /usr/sbin/nsd ] || need+=(nsd)
command -v dig >/dev/null 2>&1 || need+=(bind9-dnsutils)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need+=(redis-server)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ] || need+=(prometheus)
command -v dnsperf >/dev/null 2>&1 || need+=(dnsperf)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || need+=(libssl-dev)
command -v dpkg-shlibdeps >/dev/null 2>&1 || need+=(dpkg-dev)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v adduser >/dev/null 2>&1 || [ -x /usr/sbin/adduser ] || need+=(adduser)
command -v gpasswd >/dev/null 2>&1 || need+=(passwd)
perl -MMaxMind::DB::Writer::Tree -e 1 >/dev/null 2>&1 || need+=(libmaxmind-db-writer-perl)
# Debian's python3 has no venv/ensurepip without python3-venv.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)

root="$(cd "$(dirname "$0")/.." && pwd)"

# The venv for examples/python, (re)made when requirements.txt changed since it was filled.
python_venv() {
  local venv="$root/target/py-venv" req="$root/examples/python/requirements.txt"
  if [ -x "$venv/bin/python" ] && cmp -s "$req" "$venv/requirements.installed" \
     && "$venv/bin/python" -c 'import nats, paho.mqtt, redis' >/dev/null 2>&1; then
    return 0
  fi
  echo "creating $venv (pip install -r examples/python/requirements.txt)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  cp "$req" "$venv/requirements.installed"
}

# Grafana's LogQL grammar for the dashboard tests, pinned; nothing is fetched when the
# pinned versions are already in target/node_modules (offline-safe).
LEZER_LOGQL=0.4.2 LEZER_LR=1.4.10 LEZER_COMMON=1.2.3
node_modules() {
  local nm="$root/target/node_modules"
  if [ "$(node -p "require('$nm/@grafana/lezer-logql/package.json').version" 2>/dev/null)" = "$LEZER_LOGQL" ] \
     && [ "$(node -p "require('$nm/@lezer/lr/package.json').version" 2>/dev/null)" = "$LEZER_LR" ]; then
    return 0
  fi
  echo "installing @grafana/lezer-logql@$LEZER_LOGQL into $nm (npm)" >&2
  mkdir -p "$root/target"
  npm install --prefix "$root/target" --no-save --no-audit --no-fund --no-package-lock \
    --loglevel=error "@grafana/lezer-logql@$LEZER_LOGQL" "@lezer/lr@$LEZER_LR" \
    "@lezer/common@$LEZER_COMMON" >/dev/null
}

if [ ${#need[@]} -eq 0 ]; then
  python_venv
  node_modules
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
# The same for BIND (Debian's service is named).
if [[ " ${need[*]} " == *" bind9 "* ]] && command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now named >/dev/null 2>&1 || true
fi
if [[ " ${need[*]} " == *" redis-server "* ]] && command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
if [[ " ${need[*]} " == *" mosquitto "* ]] && command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
python_venv
node_modules
