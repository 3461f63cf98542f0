#!/bin/sh
# Entrypoint of the named image: wait for tapbus-broker's dnstap socket on the shared
# volume, make it writable for named's user, check the configuration, then exec named in
# the foreground (-g: logs on standard error). No Vector: named writes dnstap straight to
# the broker's socket.
#
#   NAMED_CONF     configuration file           (default /etc/bind/named.conf)
#   DNSTAP_SOCKET  the broker's socket          (default /run/dnstap/dnstap.sock)
#   DNSTAP_GROUP   group given the socket       (default 10053, the broker's socket_group)
#   DNSTAP_WAIT    seconds to wait for it       (default 60; then named starts anyway and
#                                                reconnects to the socket by itself)
#   NAMED_USER     user named drops to          (default bind; empty: stays root)
#   NAMED          the named binary             (default named)
# Further arguments are passed to named (e.g. -4).
set -eu

conf="${NAMED_CONF:-/etc/bind/named.conf}"
sock="${DNSTAP_SOCKET:-/run/dnstap/dnstap.sock}"
group="${DNSTAP_GROUP:-10053}"
wait="${DNSTAP_WAIT:-60}"
user="${NAMED_USER-bind}"
named="${NAMED:-named}"

waited=0
while [ ! -S "$sock" ]; do
    if [ "$waited" -ge "$wait" ]; then
        echo "entrypoint: no dnstap socket at $sock after ${wait}s; starting named anyway" >&2
        break
    fi
    sleep 1
    waited=$((waited + 1))
done

if [ -S "$sock" ]; then
    # The broker creates it 0660 with group $group; make sure, whatever created it.
    chgrp "$group" "$sock"
    chmod 0660 "$sock"
    echo "entrypoint: dnstap socket $sock ready (group $group)" >&2
fi

named-checkconf "$conf"
if [ -n "$user" ]; then
    exec "$named" -g -u "$user" -c "$conf" "$@"
fi
exec "$named" -g -c "$conf" "$@"
