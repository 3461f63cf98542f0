#!/usr/bin/env python3
"""Print the tapbus events published on Redis, one line each:
<channel or stream key> <identity> <operation> <qname> <rcode>

    # publish mode (the default): pattern-subscribe to the channels
    python3 redis_subscribe.py --url redis://127.0.0.1:6379 --pattern 'dnstap.*'
    # stream mode: read the stream as one consumer of a group, acknowledging every event
    python3 redis_subscribe.py --url redis://127.0.0.1:6379 --stream dnstap --group dns-workers

Needs redis-py (pip install -r requirements.txt). Exits 0 after --count events, 1 when
--timeout seconds pass first.
"""
import argparse
import json
import os
import socket
import sys
import time

import redis


def show(where, data):
    ev = json.loads(data)
    dns, tap = ev["dns"], ev["dnstap"]
    print(where, tap["identity"], tap["operation"], dns["qname"], dns["rcode"], flush=True)


def pubsub(r, args, deadline):
    p = r.pubsub(ignore_subscribe_messages=True)
    p.psubscribe(args.pattern)
    p.get_message(timeout=5)  # the psubscribe confirmation: the server has it now
    print(f"subscribed to {args.pattern} on {args.url}", file=sys.stderr, flush=True)
    seen = 0
    while not args.count or seen < args.count:
        msg = p.get_message(timeout=max(0.0, deadline - time.monotonic()) if deadline else 1.0)
        if msg:
            show(msg["channel"].decode(), msg["data"])
            seen += 1
        elif deadline and time.monotonic() >= deadline:
            return seen
    return seen


def stream(r, args, deadline):
    try:  # the group reads the stream from its beginning ("0"); "$" would be only new events
        r.xgroup_create(args.stream, args.group, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):  # the group exists already: carry on where it is
            raise
    consumer = args.consumer or f"{socket.gethostname()}-{os.getpid()}"
    print(f"reading stream {args.stream} as {args.group}/{consumer}", file=sys.stderr, flush=True)
    seen = 0
    while not args.count or seen < args.count:
        if deadline and time.monotonic() >= deadline:
            return seen
        # ">": entries never delivered to this group; block up to a second for new ones.
        # Only as many as --count still needs: an entry read is pending for this consumer
        # until it is acked, so reading more would leave them to the group's reclaim.
        want = min(100, args.count - seen) if args.count else 100
        reply = r.xreadgroup(args.group, consumer, {args.stream: ">"}, count=want, block=1000)
        for key, entries in reply:
            for entry_id, fields in entries:
                show(key.decode(), fields[b"data"])
                r.xack(args.stream, args.group, entry_id)
                seen += 1
    return seen


def main(args):
    r = redis.Redis.from_url(args.url)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    seen = (stream if args.stream else pubsub)(r, args, deadline)
    if args.count and seen >= args.count:
        return 0
    print(f"timeout: {seen} events", file=sys.stderr)
    return 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="redis://127.0.0.1:6379", help="redis:// or rediss://")
    p.add_argument("--pattern", default="dnstap.*", help="PSUBSCRIBE pattern (publish mode)")
    p.add_argument("--stream", help="read this stream key (stream mode) instead of pub/sub")
    p.add_argument("--group", default="tapbus-example", help="consumer group (stream mode)")
    p.add_argument("--consumer", help="consumer name in the group (default: host-unique)")
    p.add_argument("--count", type=int, default=0, help="exit after N events (0: never)")
    p.add_argument("--timeout", type=float, default=None, help="give up after N seconds")
    sys.exit(main(p.parse_args()))
