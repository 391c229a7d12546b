"""A loopback HTTP proxy in front of the S3 server that misbehaves on purpose, request by request.

Each request the client sends is, with probability `rate`, answered by a fault instead of the
server: a 503 SlowDown, a 500 InternalError, a connection reset, or a delay before it is forwarded.
Decisions come from a seeded `random.Random`, so a trial replays. The proxy speaks just enough
HTTP/1.1 for boto3: one request at a time per connection, bodies by Content-Length, responses by
Content-Length or chunked; `Expect: 100-continue` is answered here so a fault can refuse the body.
"""

from __future__ import annotations

import collections
import random
import socket
import struct
import threading
import time

FAULTS = ("503", "500", "reset", "latency")
_ERROR = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>injected by the test '
          'proxy</Message></Error>')


class FaultProxy:
    def __init__(self, upstream: tuple[str, int], rate: float, seed: int):
        self.upstream = upstream
        self.rate = rate
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def _decide(self) -> str | None:
        with self.lock:
            self.counts["requests"] += 1
            if self.rng.random() >= self.rate:
                return None
            fault = self.rng.choice(FAULTS)
            self.counts[fault] += 1
            return fault

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        server = None
        try:
            reader = client.makefile("rb")
            while True:
                head = _read_head(reader)
                if head is None:
                    return
                first, headers = head
                fault = self._decide()
                if fault == "reset":
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if fault in ("503", "500"):
                    code = "SlowDown" if fault == "503" else "InternalError"
                    body = _ERROR.format(code=code).encode()
                    reason = "Service Unavailable" if fault == "503" else "Internal Server Error"
                    client.sendall(f"HTTP/1.1 {fault} {reason}\r\nContent-Type: application/xml\r\n"
                                   f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
                    return
                if fault == "latency":
                    time.sleep(self.rng.uniform(0.05, 0.5))
                if headers.get("expect", "").lower() == "100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                length = int(headers.get("content-length", "0"))
                body = reader.read(length) if length else b""
                if server is None:
                    server = socket.create_connection(self.upstream, timeout=120)
                    server_reader = server.makefile("rb")
                raw = first + "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k != "expect") + "\r\n"
                server.sendall(raw.encode("latin-1") + body)
                status_line, resp_headers = _read_head(server_reader)
                out = status_line + "".join(f"{k}: {v}\r\n" for k, v in resp_headers.items()) + "\r\n"
                client.sendall(out.encode("latin-1"))
                method, status = first.split(" ", 1)[0], int(status_line.split(" ", 2)[1])
                if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                    continue
                if "content-length" in resp_headers:
                    _copy(server_reader, client, int(resp_headers["content-length"]))
                elif resp_headers.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size_line = server_reader.readline()
                        client.sendall(size_line)
                        size = int(size_line.split(b";")[0].strip(), 16)
                        _copy(server_reader, client, size + 2)  # the chunk and its CRLF
                        if size == 0:
                            break
                else:  # body until close
                    while chunk := server_reader.read1(65536):
                        client.sendall(chunk)
                    return
        except (OSError, ValueError):
            return
        finally:
            client.close()
            if server is not None:
                server.close()


def _read_head(reader) -> tuple[str, dict[str, str]] | None:
    first = reader.readline()
    if not first:
        return None
    headers: dict[str, str] = {}
    while True:
        line = reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return first.decode("latin-1"), headers


def _copy(reader, sock: socket.socket, n: int) -> None:
    while n > 0:
        chunk = reader.read(min(n, 1 << 20))
        if not chunk:
            raise OSError("upstream closed mid-body")
        sock.sendall(chunk)
        n -= len(chunk)
