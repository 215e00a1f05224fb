"""A TCP listener for small request-response protocols (the health endpoint, HAProxy's
agent check), in a thread of its own.

Each client gets a thread, at most ``max_clients`` at once, ``timeout`` seconds in all
to send a request of at most ``limit`` bytes (else the ``too_slow`` or ``too_large``
answer), one answer, and the connection is closed.

When ``max_clients`` are connected, a new client takes the slot of the oldest one that
has not finished sending its request (that one is closed without an answer): idle or
slow clients cannot keep the health checks out.  Only when every client has sent its
request and is being answered, and none finishes within :data:`ANSWER_WAIT`, does the
new one get the protocol's ``busy`` answer (an empty ``busy``: closed without a word).

After ``fork()`` the child does not listen: its copies of the listening and client
sockets are closed (the port stays the parent's alone, and is free again once the
parent stops), and a listener is stopped there at once.  Start it again in the child to
serve from there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from .. import _forksafe

__all__ = ["Listener", "Protocol"]

logger = logging.getLogger("sqlrouter.observe")

#: How long a new client waits for a slot when every client is being answered (then
#: it gets the ``busy`` answer); the accept loop waits with it.
ANSWER_WAIT: Final = 1.0


@dataclass(frozen=True, slots=True)
class Protocol:
    """What a listener speaks: when a request is complete, and the answers."""

    name: str
    complete: Callable[[bytes], bool]
    reply: Callable[[bytes], bytes]
    limit: int
    too_large: bytes
    too_slow: bytes
    busy: bytes


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # HAProxy checks every server at once: socketserver's 5 dropped checks.
    request_queue_size = socket.SOMAXCONN
    block_on_close = False
    owner: Listener

    def process_request(self, request: Any, client_address: Any) -> None:
        owner = self.owner
        if not owner.slots.acquire(blocking=False) and not owner.evict_oldest():
            logger.debug("%s: %s: too many clients", owner.protocol.name, client_address)
            busy = owner.protocol.busy
            if busy:
                with contextlib.suppress(OSError):  # a few bytes into an empty socket buffer
                    request.setblocking(False)
                    request.send(busy)
            self.shutdown_request(request)
            return
        owner.reading(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            owner.finished(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.owner.finished(request)


def _recv(sock: socket.socket, deadline: float) -> bytes | None:
    """What the client sent next (``b""``: it closed); ``None`` past ``deadline``."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    sock.settimeout(remaining)
    try:
        return sock.recv(4096)
    except TimeoutError:
        return None


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        owner = self.server.owner
        protocol = owner.protocol
        sock: socket.socket = self.request
        data = b""
        deadline = time.monotonic() + owner.timeout
        try:
            while not protocol.complete(data):
                if len(data) > protocol.limit:
                    sock.sendall(protocol.too_large)
                    return
                chunk = _recv(sock, deadline)
                if chunk is None:
                    sock.settimeout(owner.timeout)
                    sock.sendall(protocol.too_slow)
                    return
                if not chunk:
                    if not data:
                        return
                    break
                data += chunk
            owner.read(sock)
            sock.settimeout(owner.timeout)
            sock.sendall(protocol.reply(data))
        except OSError as exc:  # a client that went away, or did not read in time
            logger.debug("%s: %s: %s", protocol.name, self.client_address, exc)


class Listener:
    """Serves ``protocol`` on ``address`` (``(host, port)``; port 0: any free port)."""

    def __init__(
        self,
        address: tuple[str, int],
        protocol: Protocol,
        *,
        timeout: float,
        max_clients: int,
    ) -> None:
        if not timeout > 0 or not max_clients > 0:
            raise ValueError(
                f"timeout ({timeout!r}) and max_clients ({max_clients!r}) must be positive"
            )
        self._wanted = address
        self.protocol = protocol
        self.timeout = timeout
        self._max_clients = max_clients
        self.slots = threading.BoundedSemaphore(max_clients)
        #: The clients still sending their request, with when they connected.
        self._reading: dict[socket.socket, float] = {}
        self._lock = _forksafe.lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        _listeners.add(self)

    def reading(self, sock: socket.socket) -> None:
        """``sock`` holds a slot and is sending its request."""
        with self._lock:
            self._reading[sock] = time.monotonic()

    def read(self, sock: socket.socket) -> None:
        """``sock`` sent its request: it is being answered, and keeps its slot."""
        with self._lock:
            self._reading.pop(sock, None)

    def finished(self, sock: socket.socket) -> None:
        """``sock`` is done: its slot is free."""
        with self._lock:
            self._reading.pop(sock, None)
        self.slots.release()

    def evict_oldest(self) -> bool:
        """All slots are taken: close the oldest client still sending its request and
        take its slot once its thread let go; when every client is being answered
        (answers are made in memory: it takes little), wait up to :data:`ANSWER_WAIT`
        seconds for one to finish.  False: no slot in time."""
        with self._lock:
            oldest = None
            if self._reading:
                oldest = min(self._reading, key=self._reading.__getitem__)
                del self._reading[oldest]
        if oldest is None:
            return self.slots.acquire(timeout=min(self.timeout, ANSWER_WAIT))
        logger.debug("%s: all slots taken: closed the oldest unfinished client", self.protocol.name)
        with contextlib.suppress(OSError):  # wakes its thread's recv() with b""
            oldest.shutdown(socket.SHUT_RDWR)
        return self.slots.acquire(timeout=self.timeout)

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            return self._wanted
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        if self._server is not None:
            return
        family = socket.AF_INET6 if ":" in self._wanted[0] else socket.AF_INET
        server_class = type("_Server", (_Server,), {"address_family": family})
        server: _Server = server_class(self._wanted, _Handler)
        server.owner = self
        server.timeout = POLL
        self._server = server
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=_serve,
            args=(server, self._stopping),
            name=f"sqlrouter-{self.protocol.name}-{self.address[1]}",
            daemon=True,
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and join the thread (at most ``timeout`` seconds: the
        thread notices within :data:`POLL`)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        self._stopping.set()
        if thread is not None:
            thread.join(timeout)
        server.server_close()

    def _forked(self) -> None:
        """In the child of a ``fork()``: the serving thread is not there; close this
        process's copies of the sockets (nothing is sent on them) and forget them."""
        server = self._server
        self._server = self._thread = None
        reading, self._reading = list(self._reading), {}
        self.slots = threading.BoundedSemaphore(self._max_clients)
        if server is None:
            return
        for sock in (server.socket, *reading):
            with contextlib.suppress(OSError):
                sock.close()


#: How often the serving thread looks whether it should stop, in seconds.
POLL: Final = 0.2


def _serve(server: _Server, stopping: threading.Event) -> None:
    """The serving thread: one accepted client at a time until ``stopping``."""
    while not stopping.is_set():
        try:
            server.handle_request()
        except (OSError, ValueError):  # the socket was closed under it (stop() timed out)
            if stopping.is_set():
                return
            logger.exception("%s: accept failed", server.owner.protocol.name)
            stopping.wait(POLL)


_listeners: weakref.WeakSet[Listener] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for listener in list(_listeners):
        listener._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)
