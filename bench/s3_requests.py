#!/usr/bin/env python3
"""Turns bench/s3proxy.py's request log and loadgen's --trace into S3 requests per operation.

    python3 bench/s3_requests.py OPS_TSV

OPS_TSV has one line per measured operation, written by bench/s3-requests.sh:

    server  operation  n  labels  trace_file  proxy_log  t0  t1

`labels` are the loadgen request labels that make up the operation (comma separated, e.g.
`POST-upload,PUT-commit-body`), `n` how many times it ran, [t0, t1] the window (Unix seconds)
the loadgen ran in, plus a settling second. An S3 request belongs to the client request whose
[start, end] holds the S3 request's start (the proxy's log time minus its duration): with one
client request at a time, the server sends it while serving that request. S3 requests in the
window but inside no client request are counted apart, as `outside` (work a server does in
the background); those made for the loadgen's preparation (a manifest's config and layer) are
left out. Prints a Markdown table per
server and one side by side.
"""

import bisect
import sys
from collections import Counter, OrderedDict

# Column order of the request kinds in the tables (anything else is appended).
KIND_ORDER = [
    "HeadObject", "GetObject", "PutObject", "PutObject+cond", "CopyObject", "CopyObject+cond",
    "CreateMultipartUpload", "UploadPart", "UploadPartCopy", "CompleteMultipartUpload",
    "CompleteMultipartUpload+cond", "AbortMultipartUpload", "ListParts", "ListObjectsV2",
    "ListObjects", "DeleteObject", "DeleteObjects",
]
SLACK = 0.002  # seconds: clock reads on either side of a loopback request


def read_proxy(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) < 9:
                continue
            end, ms = float(p[0]), float(p[8])
            out.append((end - ms / 1000.0, p[2], int(p[3])))
    out.sort()
    return out


def read_trace(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) == 5:
                out.append((float(p[0]), float(p[1]), p[2], p[4]))
    out.sort()
    return out


def fmt(x):
    return ("%.2f" % x).rstrip("0").rstrip(".") if x else "0"


def kinds_text(counter, n):
    keys = [k for k in KIND_ORDER if counter.get(k)] + sorted(k for k in counter if k not in KIND_ORDER)
    return ", ".join("%s %s" % (k, fmt(counter[k] / n)) for k in keys) or "—"


def measure(row):
    server, op, n, labels, trace_file, proxy_log, t0, t1 = row
    n, t0, t1 = int(n), float(t0), float(t1)
    labels = labels.split(",")
    trace = [t for t in read_trace(trace_file) if t0 <= t[0] <= t1]
    starts = [t[0] for t in trace]
    per_label = OrderedDict((label, Counter()) for label in labels)
    other, outside = Counter(), Counter()
    per_instance = Counter()  # trace index -> S3 requests it caused
    for s3_start, kind, status in read_proxy(proxy_log):
        if not t0 <= s3_start <= t1:
            continue
        kind = kind if status < 400 else "%s(%d)" % (kind, status)
        i = bisect.bisect_right(starts, s3_start + SLACK) - 1
        # The client request running then: the latest one started before, if not yet ended.
        hit = None
        while i >= 0:
            start, end, label, phase = trace[i]
            if start - SLACK <= s3_start <= end + SLACK:
                hit = (label, phase, i)
                break
            if end + 60 < s3_start:
                break
            i -= 1
        if hit is None:
            outside[kind] += 1
        elif hit[1] != "run":
            continue  # the loadgen's preparation (a manifest's config and layer), not the operation
        elif hit[0] in per_label:
            per_label[hit[0]][kind] += 1
            per_instance[hit[2]] += 1
        else:
            other[kind] += 1
    # Per label: how many S3 requests each client request of that label caused (for the range).
    spread = {label: [per_instance[i] for i, t in enumerate(trace) if t[2] == label and t[3] == "run"]
              for label in labels}
    return server, op, n, per_label, other, outside, spread


def main():
    rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1], encoding="utf-8") if line.strip()]
    results = [measure(r) for r in rows]
    servers = list(OrderedDict.fromkeys(r[0] for r in results))
    side = OrderedDict()
    for server in servers:
        print("\n#### %s: S3 requests per operation (by kind; `outside`: in the window, during no client request)\n" % server)
        print("| operation | n | per op | by kind | outside (total) |")
        print("|---|---|---|---|---|")
        for srv, op, n, per_label, other, outside, spread in results:
            if srv != server:
                continue
            total = Counter()
            for c in per_label.values():
                total.update(c)
            rng = ""
            if len(per_label) == 1:
                counts = next(iter(spread.values())) or [0]
                if min(counts) != max(counts):
                    rng = " (%d–%d)" % (min(counts), max(counts))
            print("| %s | %d | **%s**%s | %s | %s |" % (
                op, n, fmt(sum(total.values()) / n), rng, kinds_text(total, n),
                sum(outside.values()) and kinds_text(outside, 1) or "0"))
            if len(per_label) > 1:
                for label, c in per_label.items():
                    counts = spread[label] or [0]
                    rng = "" if min(counts) == max(counts) else " (%d–%d)" % (min(counts), max(counts))
                    print("| &nbsp;&nbsp;each %s (×%d) | | %s%s | %s | |" % (
                        label, len(spread[label]), fmt(sum(c.values()) / len(counts)), rng,
                        kinds_text(c, len(counts))))
            if other:
                print("| &nbsp;&nbsp;other client requests | | %s | %s | |" % (
                    fmt(sum(other.values()) / n), kinds_text(other, n)))
            side.setdefault(op, {})[srv] = fmt(sum(total.values()) / n)
    if len(servers) > 1:
        print("\n#### Side by side: S3 requests per operation\n")
        print("| operation | " + " | ".join(servers) + " |")
        print("|---|" + "---|" * len(servers))
        for op, by in side.items():
            print("| %s | %s |" % (op, " | ".join(by.get(s, "—") for s in servers)))


if __name__ == "__main__":
    main()
