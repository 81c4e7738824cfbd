#!/usr/bin/env python3
"""A logging S3 proxy for counting the requests a registry makes (issue 13, target 4).

    python3 bench/s3proxy.py --listen 127.0.0.1:0 --upstream 127.0.0.1:8333 --log FILE

Point the registry's S3 endpoint at the proxy. Every request is forwarded unchanged (method,
path, query, every header including Host, so SigV4 signatures stay valid: the client signs the
Host it sends, which is the proxy's, and the proxy passes that Host on), bodies are streamed in
1 MiB pieces both ways (an 8 MiB part is never held whole), and one tab-separated line per
request is appended to FILE when the response has been sent:

    unix_time  method  kind  status  path  query_keys  bytes_in  bytes_out  ms

`kind` names the S3 operation (HeadObject, PutObject, UploadPart, ListObjectsV2, ...), with
`+cond` when the request carries If-Match/If-None-Match and `+copy` for x-amz-copy-source;
`query_keys` are the query parameter names (values dropped: upload ids, markers), comma
separated, `-` if none. On start it prints `s3proxy listening on http://HOST:PORT`.

Written with the Python standard library rather than taken from a tool: mitmproxy and the
like are not installed and not reachable offline, and only our own proxy can name the S3
operation of each request.
"""

import argparse
import http.client
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

PIECE = 1 << 20
# Hop-by-hop headers: about this connection, not the request; everything else goes on as sent.
HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}


def s3_kind(method, path, query, headers):
    """The S3 API operation of a path-style request."""
    keys = {k for k, _ in query}
    params = dict(query)
    parts = path.lstrip("/").split("/", 1)
    on_object = len(parts) == 2 and parts[1] != ""
    copy = "x-amz-copy-source" in headers
    if on_object:
        if method == "HEAD":
            kind = "HeadObject"
        elif method == "GET":
            kind = "ListParts" if "uploadId" in keys else "GetObject"
        elif method == "PUT":
            if "partNumber" in keys and "uploadId" in keys:
                kind = "UploadPartCopy" if copy else "UploadPart"
            else:
                kind = "CopyObject" if copy else "PutObject"
        elif method == "POST":
            if "uploads" in keys:
                kind = "CreateMultipartUpload"
            elif "uploadId" in keys:
                kind = "CompleteMultipartUpload"
            else:
                kind = "PostObject"
        elif method == "DELETE":
            kind = "AbortMultipartUpload" if "uploadId" in keys else "DeleteObject"
        else:
            kind = method + "Object"
    else:
        if method == "GET" and "uploads" in keys:
            kind = "ListMultipartUploads"
        elif method == "GET" and params.get("list-type") == "2":
            kind = "ListObjectsV2"
        elif method == "GET" and "location" in keys:
            kind = "GetBucketLocation"
        elif method == "GET":
            kind = "ListObjects"
        elif method == "POST" and "delete" in keys:
            kind = "DeleteObjects"
        elif method == "HEAD":
            kind = "HeadBucket"
        elif method == "PUT":
            kind = "CreateBucket"
        else:
            kind = method + "Bucket"
    if "if-match" in headers or "if-none-match" in headers:
        kind += "+cond"
    if copy and kind not in ("CopyObject", "UploadPartCopy"):
        kind += "+copy"
    return kind


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive both ways, and 100-continue handled for us
    upstream = ("127.0.0.1", 8333)
    log_file = None
    log_lock = threading.Lock()

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = None  # one keep-alive connection upstream per client connection

    def finish(self):
        if self.conn is not None:
            self.conn.close()
        super().finish()

    def log_message(self, fmt, *args):  # no stderr line per request: the log file has them
        pass

    def _upstream(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(*self.upstream, timeout=600)
        return self.conn

    def _body_pieces(self):
        """The request body, streamed: by Content-Length, or de-chunked."""
        te = self.headers.get("Transfer-Encoding", "").lower()
        if "chunked" in te:
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                left = size
                while left:
                    piece = self.rfile.read(min(left, PIECE))
                    if not piece:
                        raise ConnectionError("client closed inside a chunk")
                    left -= len(piece)
                    yield piece
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                piece = self.rfile.read(min(left, PIECE))
                if not piece:
                    raise ConnectionError("client closed inside the body")
                left -= len(piece)
                yield piece

    def _forward(self):
        started = time.monotonic()
        split = urlsplit(self.path)
        query = parse_qsl(split.query, keep_blank_values=True)
        lower = {k.lower() for k in self.headers.keys()}
        kind = s3_kind(self.command, split.path, query, lower)
        chunked_in = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        status, sent_in, sent_out = 502, 0, 0
        try:
            conn = self._upstream()
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP:
                    conn.putheader(name, value)
            if chunked_in:
                conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for piece in self._body_pieces():
                sent_in += len(piece)
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked_in else piece)
            if chunked_in:
                conn.send(b"0\r\n\r\n")
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            if self.conn is not None:
                self.conn.close()
                self.conn = None
            self._log(kind, split, query, 502, sent_in, 0, started)
            msg = f"s3proxy: upstream failed: {e}\n".encode()
            self.send_response_only(502)
            self.send_header("Content-Length", str(len(msg)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(msg)
            self.close_connection = True
            return
        status = resp.status
        length = resp.getheader("Content-Length")
        no_body = self.command == "HEAD" or status in (204, 304) or 100 <= status < 200
        chunked_out = not no_body and length is None
        self.send_response_only(status, resp.reason)
        for name, value in resp.getheaders():
            if name.lower() not in HOP:
                self.send_header(name, value)
        if chunked_out:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            if not no_body:
                while True:
                    piece = resp.read(PIECE)
                    if not piece:
                        break
                    sent_out += len(piece)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked_out else piece)
                if chunked_out:
                    self.wfile.write(b"0\r\n\r\n")
            else:
                resp.read()
            self.wfile.flush()
        finally:
            if resp.will_close:
                self.conn.close()
                self.conn = None
            self._log(kind, split, query, status, sent_in, sent_out, started)

    def _log(self, kind, split, query, status, sent_in, sent_out, started):
        keys = ",".join(sorted({k for k, _ in query})) or "-"
        line = "%.6f\t%s\t%s\t%d\t%s\t%s\t%d\t%d\t%.2f\n" % (
            time.time(), self.command, kind, status, split.path, keys, sent_in, sent_out,
            (time.monotonic() - started) * 1000)
        with self.log_lock:
            self.log_file.write(line)
            self.log_file.flush()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _forward


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free port)")
    ap.add_argument("--upstream", required=True, help="HOST:PORT of the S3 server")
    ap.add_argument("--log", required=True, help="file to append one line per request to")
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)
    up_host, up_port = a.upstream.rsplit(":", 1)
    Handler.upstream = (up_host, int(up_port))
    Handler.log_file = open(a.log, "a", encoding="utf-8")
    server = Server((host, int(port)), Handler)
    print("s3proxy listening on http://%s:%d" % server.server_address[:2], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
