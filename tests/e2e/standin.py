"""Stand-in for the LeadGen API in the end-to-end suite.

GET /lead/health answers as /run/standin/mode says: `healthy` (200),
`503`, `hang` (accepts, never answers), `refuse` (stops listening). A mode
ending in `-until-restart` turns `healthy` when the process starts again, so
a restart cures it. Tells systemd READY=1 once listening (Type=notify).
"""

import http.server
import os
import socket
import threading
import time

MODE_FILE = "/run/standin/mode"


def mode() -> str:
    try:
        with open(MODE_FILE) as handle:
            return handle.read().strip() or "healthy"
    except FileNotFoundError:
        return "healthy"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        current = mode()
        if current.startswith("hang"):
            time.sleep(3600)
            return
        status = 503 if current.startswith("503") else 200
        body = b'{"status":"ok"}' if status == 200 else b'{"status":"down"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def notify_ready() -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if address:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", "\0" + address[1:] if address[0] == "@" else address)


def main() -> None:
    if mode().endswith("-until-restart"):
        with open(MODE_FILE, "w") as handle:
            handle.write("healthy\n")
    ready = False
    while True:
        if mode().startswith("refuse"):
            time.sleep(0.1)
            continue
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 8000), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        if not ready:
            notify_ready()
            ready = True
        while not mode().startswith("refuse"):
            time.sleep(0.1)
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
