#!/usr/bin/env python3
"""Print the tapbus events published on MQTT, one line each:
<topic> <identity> <operation> <qname> <rcode>

    python3 mqtt_subscribe.py --url mqtt://127.0.0.1:1883 --topic 'dnstap/+/client_response'

Needs paho-mqtt 2 (pip install -r requirements.txt). Exits 0 after --count events, 1 when
--timeout seconds pass first.
"""
import argparse
import json
import sys
import threading
from urllib.parse import urlparse

import paho.mqtt.client as mqtt


def main(args):
    url = urlparse(args.url)
    done = threading.Event()
    seen = 0

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe(args.topic, qos=args.qos)

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        print(f"subscribed to {args.topic} on {args.url}", file=sys.stderr, flush=True)

    def on_message(client, userdata, msg):
        nonlocal seen
        # Messages already on their way when --count was reached are not printed.
        if args.count and seen >= args.count:
            return
        ev = json.loads(msg.payload)
        dns, tap = ev["dns"], ev["dnstap"]
        print(msg.topic, tap["identity"], tap["operation"], dns["qname"], dns["rcode"], flush=True)
        seen += 1
        if args.count and seen >= args.count:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    if url.scheme == "mqtts":
        client.tls_set()
    if url.username:
        client.username_pw_set(url.username, url.password)
    client.connect(url.hostname, url.port or (8883 if url.scheme == "mqtts" else 1883))
    client.loop_start()
    ok = done.wait(args.timeout)
    client.disconnect()
    client.loop_stop()
    if not ok:
        print(f"timeout: {seen} events", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="mqtt://127.0.0.1:1883", help="mqtt:// or mqtts://")
    p.add_argument("--topic", default="dnstap/#", help="MQTT topic filter, + and # allowed")
    p.add_argument("--qos", type=int, default=0, choices=(0, 1))
    p.add_argument("--count", type=int, default=0, help="exit after N events (0: never)")
    p.add_argument("--timeout", type=float, default=None, help="give up after N seconds")
    sys.exit(main(p.parse_args()))
