#!/usr/bin/env python3
"""Print the tapbus events published on NATS, one line each:
<subject> <identity> <operation> <qname> <rcode>

    python3 nats_subscribe.py --url nats://127.0.0.1:4222 --subject 'dnstap.*.client_response'

Needs nats-py (pip install -r requirements.txt). Exits 0 after --count events, 1 when
--timeout seconds pass first.
"""
import argparse
import asyncio
import json
import sys

import nats


async def main(args):
    nc = await nats.connect(args.url)
    done = asyncio.Event()
    seen = 0

    async def on_event(msg):
        nonlocal seen
        # Messages already on their way when --count was reached are not printed.
        if args.count and seen >= args.count:
            return
        ev = json.loads(msg.data)
        dns, tap = ev["dns"], ev["dnstap"]
        print(msg.subject, tap["identity"], tap["operation"], dns["qname"], dns["rcode"], flush=True)
        seen += 1
        if args.count and seen >= args.count:
            done.set()

    await nc.subscribe(args.subject, cb=on_event)
    await nc.flush()  # the server has the subscription now
    print(f"subscribed to {args.subject} on {args.url}", file=sys.stderr, flush=True)
    try:
        await done.wait()
    finally:
        await nc.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="nats://127.0.0.1:4222")
    p.add_argument("--subject", default="dnstap.>", help="NATS subject, wildcards allowed")
    p.add_argument("--count", type=int, default=0, help="exit after N events (0: never)")
    p.add_argument("--timeout", type=float, default=None, help="give up after N seconds")
    args = p.parse_args()
    try:
        asyncio.run(asyncio.wait_for(main(args), args.timeout))
    except asyncio.TimeoutError:
        sys.exit(f"timeout after {args.timeout} s")
