"""The HTTP server under the test and benchmark peers that speak HTTP: threads per request, on
127.0.0.1 only, no reverse DNS lookup when it binds, and quiet about clients that hang up."""

from __future__ import annotations

import socketserver
import sys
from http.server import ThreadingHTTPServer
from typing import Any


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def server_bind(self) -> None:  # no reverse DNS lookup (getfqdn), which can take seconds
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client that went away is not our error
            super().handle_error(request, client_address)
