#!/usr/bin/env bash
# Builds the seed corpora of the fuzz targets from the dnstap test data (corpus/ is
# git-ignored; run this once before `cargo fuzz run`, it is idempotent):
#
#   corpus/event_encode/  individual dnstap data frames (protobuf payloads) from every
#                         capture and every malformed input, a few hundred in all;
#   corpus/fstrm_reader/  every malformed/*.fstrm file whole, plus the first 4 KiB of each
#                         capture (a START frame and some data frames, cut mid-frame).
#
# Usage: fuzz/seed.sh [TESTDATA_DIR]   (default: testdata/dnstap of the repository)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data="${1:-$here/../../testdata/dnstap}"
[ -d "$data" ] || { echo "test data not found: $data" >&2; exit 1; }
mkdir -p "$here/corpus/event_encode" "$here/corpus/fstrm_reader"

python3 - "$data" "$here/corpus" <<'PY'
import hashlib, os, struct, sys

data, corpus = sys.argv[1], sys.argv[2]

def frames(buf):
    """Data frame payloads of a Frame Streams byte stream (stops at the first damage)."""
    pos = 0
    while pos + 4 <= len(buf):
        (n,) = struct.unpack_from(">I", buf, pos)
        pos += 4
        if n == 0:  # control frame: escape, length, payload
            if pos + 4 > len(buf):
                return
            (c,) = struct.unpack_from(">I", buf, pos)
            pos += 4 + c
            continue
        if pos + n > len(buf):
            return
        yield buf[pos:pos + n]
        pos += n

def save(dirname, blob):
    name = hashlib.sha1(blob).hexdigest()
    with open(os.path.join(corpus, dirname, name), "wb") as f:
        f.write(blob)

captures = sorted(f for f in os.listdir(data) if f.endswith(".fstrm"))
malformed = sorted(f for f in os.listdir(os.path.join(data, "malformed")) if f.endswith(".fstrm"))

n_events = 0
for name in captures:
    with open(os.path.join(data, name), "rb") as f:
        buf = f.read()
    payloads = list(frames(buf))
    # an even spread of 40 frames per capture, plus the largest few (many records, EDNS)
    step = max(1, len(payloads) // 40)
    picked = payloads[::step][:40] + sorted(payloads, key=len)[-5:]
    for p in picked:
        save("event_encode", p)
        n_events += 1
    save("fstrm_reader", buf[:4096])
for name in malformed:
    with open(os.path.join(data, "malformed", name), "rb") as f:
        buf = f.read()
    save("fstrm_reader", buf)
    for p in frames(buf):
        if len(p) <= 65536:
            save("event_encode", p)
            n_events += 1
print(f"event_encode: {len(os.listdir(os.path.join(corpus, 'event_encode')))} seeds; "
      f"fstrm_reader: {len(os.listdir(os.path.join(corpus, 'fstrm_reader')))} seeds")
PY
