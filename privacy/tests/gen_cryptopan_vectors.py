#!/usr/bin/env python3
"""Regenerate privacy/tests/cryptopan_vectors.txt with an independent Crypto-PAn.

    python3 -m venv /tmp/cpvenv && /tmp/cpvenv/bin/pip install yacryptopan
    /tmp/cpvenv/bin/python privacy/tests/gen_cryptopan_vectors.py > privacy/tests/cryptopan_vectors.txt

Key: the reference implementation's sample key (sample.cpp). IPv4 inputs are
the distinct addresses of the reference sample_trace_raw.txt (so the IPv4
lines are also the published sample_trace_sanitized.txt pairs; checked against
the copy of that table in other Crypto-PAn ports' tests); IPv6 inputs are a fixed mix of
documentation, special and random-looking addresses. The Rust test reads this
file; it does not need Python.
"""
import ipaddress
import random

import yacryptopan

KEY = bytes([21, 34, 23, 141, 51, 164, 207, 128, 19, 10, 91, 22, 73, 144, 125, 16,
             216, 152, 143, 131, 121, 121, 101, 39, 98, 87, 76, 45, 42, 132, 34, 2])

V4 = """128.11.68.132 129.118.74.4 130.132.252.244 141.223.7.43 141.233.145.108
152.163.225.39 156.29.3.236 165.247.96.84 166.107.77.190 192.102.249.13 192.215.32.125
192.233.80.103 192.41.57.43 193.150.244.223 195.205.63.100 198.200.171.101
198.26.132.101 198.36.213.5 198.51.77.238 199.217.79.101 202.49.198.20 203.12.160.252
204.184.162.189 204.202.136.230 204.29.20.4 205.178.38.67 205.188.147.153
205.188.248.25 205.245.121.43 207.105.49.5 207.135.65.238 207.155.9.214 207.188.7.45
207.25.71.27 207.33.151.131 208.147.89.59 208.234.120.210 208.28.185.184
208.52.56.122 209.12.231.7 209.238.72.3 209.246.74.109 209.68.60.238 209.85.249.6
212.120.124.31 212.146.8.236 212.186.227.154 212.204.172.118 212.206.130.201
216.148.237.145 216.157.30.252 216.184.159.48 216.227.10.221 216.254.18.172
216.32.132.250 216.35.217.178 24.0.250.221 24.13.62.231 24.14.213.138 24.5.0.80
24.7.198.88 24.94.26.44 38.15.67.68 4.3.88.225 63.14.55.111 63.195.241.44
63.97.7.140 64.14.118.196 64.34.154.117 64.39.15.238
10.185.25.118""".split()

V6_FIXED = """:: ::1 ::2 ::ffff 2001:db8::1 2001:db8::2 2001:db8:0:1::1 2001:db8:ffff::1
fe80::1 fe80::1:2:3:4 ff02::1 2a00:1450:4001:82b::200e 2606:4700:4700::1111
2001:4860:4860::8888 2001:500:2f::f 2001:7fd::1 64:ff9b::c000:201
ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 8000:: 7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff
2001:db8:1234:5678:9abc:def0:1234:5678 2001:db8:1234:5678:9abc:def0:1234:5679""".split()


def main():
    cp = yacryptopan.CryptoPAn(KEY)
    print("# Crypto-PAn vectors from yacryptopan", getattr(yacryptopan, "__version__", ""))
    print("# key = reference sample key; format: original anonymised")
    for a in V4:
        print(a, cp.anonymize(a))
    rng = random.Random(20240611)
    v6 = list(V6_FIXED)
    for _ in range(20):
        v6.append(str(ipaddress.IPv6Address(rng.getrandbits(128))))
    # a few neighbours sharing long prefixes, for prefix preservation
    base = int(ipaddress.IPv6Address("2001:db8:aaaa:bbbb::"))
    for bits in (1, 7, 33, 64, 65, 100):
        v6.append(str(ipaddress.IPv6Address(base | (1 << (bits - 1)))))
    for a in v6:
        print(str(ipaddress.IPv6Address(a)), str(ipaddress.IPv6Address(cp.anonymize(a))))


if __name__ == "__main__":
    main()
