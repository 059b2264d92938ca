"""Demo app deployed by pushcd: a tiny HTTP server that says which commit it runs.

Standard library only. It serves on the sockets the supervisor hands over
(``--fd 3``, systemd's ``LISTEN_FDS``) or binds ``--port`` itself, sends
``READY=1`` when ``NOTIFY_SOCKET`` is set, and on SIGTERM stops accepting,
finishes the requests in flight and exits.

    python3 app.py --port 8000
"""

import argparse
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMIT = os.environ.get("SUPERVISOR_COMMIT", "unknown")
MESSAGE = (HERE / "message.txt").read_text().strip() if (HERE / "message.txt").exists() else "hello"


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so no idle keep-alive connection
    # holds a stopping server open or gets cut under a client.
    def do_GET(self) -> None:
        if self.path == "/health":
            body = b"ok\n"
        else:
            body = f"{MESSAGE}\ncommit {COMMIT}\npid {os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet: the supervisor logs our output
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = False  # finish requests in flight on shutdown
    block_on_close = True


def serve_on(sock: socket.socket) -> Server:
    # The socket is shared with the next (or previous) release: when select()
    # wakes us, the other process may win the accept(). A blocking accept()
    # would then hang until some later connection, and a stopping server would
    # never notice its shutdown; non-blocking, the lost race is just skipped.
    sock.setblocking(False)
    server = Server(sock.getsockname()[:2], Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    return server


def notify_ready() -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1", addr)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, action="append", default=[], help="serve on this inherited socket")
    parser.add_argument("--port", type=int, help="bind 127.0.0.1:PORT ourselves")
    args = parser.parse_args()
    fds = args.fd
    if not fds and os.environ.get("LISTEN_PID") == str(os.getpid()):
        fds = list(range(3, 3 + int(os.environ.get("LISTEN_FDS", "0"))))
    if fds:
        servers = [serve_on(socket.socket(fileno=fd)) for fd in fds]
    else:
        servers = [Server(("127.0.0.1", args.port or 8000), Handler)]
    # Block SIGTERM/SIGINT in every thread and take them with sigwait() here:
    # a signal delivered to a handler thread would otherwise never wake a
    # main thread blocked in join(), and the server would not stop.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}) for s in servers]
    for t in threads:
        t.start()
    print(f"serving commit {COMMIT[:12]} on {[s.server_address for s in servers]}", flush=True)
    notify_ready()
    signal.sigwait(stop_signals)
    for s in servers:
        s.shutdown()  # stop accepting; server_close() then waits for requests in flight
    for t in threads:
        t.join()
    for s in servers:
        s.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
