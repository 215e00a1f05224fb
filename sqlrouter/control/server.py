"""The control server: the listener and worker threads of a process's control socket.

One listener thread does all the I/O with non-blocking sockets and :mod:`selectors`;
commands run in one worker thread.  The sockets themselves are made and removed by
:mod:`._listen`; what a client's request line gets (parsed, its token and role checked,
audited) is decided by :mod:`._admit`.  See :mod:`sqlrouter.control`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ._admit import Admitted, Client, admit, expiry
from ._listen import (
    BACKLOG,
    Listener,
    bind_tcp,
    bind_unix,
    peer_credentials,
    remove_socket,
    unix_socket_path,
)
from .commands import Commands, Handles, Watched
from .config import ControlConfig, _load_tokens, default_socket_dir, prepare_socket_dir
from .protocol import (
    COMMANDS,
    MAX_LINE,
    ControlError,
    Request,
    Role,
    describe_request,
    encode_response,
    error_response,
    peer_allowed,
)

__all__ = [
    "ControlServer",
]

logger = logging.getLogger("sqlrouter.control")
audit = logging.getLogger("sqlrouter.control.audit")


_RECV: Final = 65536
#: The longest a select() sleeps, so that a stop is seen quickly.
_TICK: Final = 0.5


@dataclass(frozen=True, slots=True)
class _Job:
    client: Client
    request: Request
    role: Role


_WAKE: Final = object()


class ControlServer:
    """The control socket of this process: listener and worker threads, owned.

    :meth:`start` creates the socket(s) and starts the threads (raising
    :class:`ControlError` if it cannot); :meth:`stop` stops and joins them within a
    bounded time and removes the socket file.  ``handles`` gives the services to act
    on (every service of this process) and ``watched`` the one a ``registry=`` spec
    names (see :class:`~sqlrouter.control.commands.Commands`).
    """

    def __init__(
        self,
        config: ControlConfig,
        *,
        handles: Handles,
        watched: Watched,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        self._uid = os.getuid()
        self.pid = os.getpid()
        self.socket_path: Path | None = None
        self.tcp_address: tuple[str, int] | None = None
        self._socket_ino: int | None = None
        self._tokens: tuple[tuple[str, Role], ...] = ()
        self._selector: selectors.BaseSelector | None = None
        self._listeners: list[Listener] = []
        self._clients: set[Client] = set()
        #: Clients connected per listener kind, and the kinds at their limit.
        self._counts: dict[str, int] = {"unix": 0, "tcp": 0}
        self._full: set[str] = set()
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._done: collections.deque[tuple[Client, dict[str, Any]]] = collections.deque()
        #: Set by :meth:`stop`; commands waiting for a monitor give up when it is.
        self.stopping = threading.Event()
        self._commands = Commands(handles, watched, self, clock)
        self._thread: threading.Thread | None = None
        self._worker: threading.Thread | None = None

    def __repr__(self) -> str:
        where = [str(self.socket_path)] if self.socket_path else []
        if self.tcp_address:
            where.append("tcp={}:{}".format(*self.tcp_address))
        state = "running" if self.running else "stopped"
        return f"<ControlServer {' '.join(where)} {state} clients={len(self._clients)}>"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def clients(self) -> int:
        return len(self._clients)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        if not hasattr(socket, "SO_PEERCRED"):
            raise ControlError("the control socket needs SO_PEERCRED (Linux)")
        config = self.config
        self._tokens = _load_tokens(config) if config.tcp is not None else ()
        directory = config.socket_dir or default_socket_dir()
        prepare_socket_dir(directory)
        path = unix_socket_path(directory, self.pid)
        listeners: list[Listener] = []
        try:
            sock, self._socket_ino = bind_unix(path)
            self.socket_path = path
            listeners.append(Listener(sock, "unix"))
            if config.tcp is not None:
                sock, self.tcp_address = bind_tcp(config.tcp)
                listeners.append(Listener(sock, "tcp"))
        except BaseException:
            for lst in listeners:
                lst.sock.close()
            self._unlink()
            raise
        self._listeners = listeners
        selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        for lst in listeners:
            selector.register(lst.sock, selectors.EVENT_READ, lst)
        self._selector = selector
        self.stopping.clear()
        self._worker = threading.Thread(
            target=self._work, name="sqlrouter-control-worker", daemon=True
        )
        self._thread = threading.Thread(target=self._run, name="sqlrouter-control", daemon=True)
        self._worker.start()
        self._thread.start()
        logger.info(
            "control socket listening on %s%s",
            path,
            " and tcp {}:{}".format(*self.tcp_address) if self.tcp_address else "",
        )

    def reload_tokens(self) -> None:
        """Re-read the token files (``reload``); on error the old tokens stay."""
        if self.config.tcp is not None:
            self._tokens = _load_tokens(self.config)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and join the threads, close every socket, remove the socket file."""
        self.stopping.set()
        self._jobs.put(None)
        self._wake()
        deadline = time.monotonic() + timeout
        for thread in (self._thread, self._worker):
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    logger.warning("control: thread %s did not stop in %gs", thread.name, timeout)
        if self._thread is None or not self._thread.is_alive():
            # Never started, or a forked child's copy (its threads do not exist there):
            # no listener thread will close the sockets.
            self._close_all()
        self._thread = self._worker = None
        self._unlink()

    def forget(self) -> None:
        """In a forked child: close this process's copies of the server's sockets and
        nothing more.  The socket file, the listeners and the epoll set are the
        parent's (an ``unregister`` here would change the parent's epoll set)."""
        socks = [c.sock for c in self._clients] + [lst.sock for lst in self._listeners]
        socks += [s for s in (self._wake_r, self._wake_w) if s is not None]
        self._clients, self._listeners = set(), []
        self._wake_r = self._wake_w = None
        selector, self._selector = self._selector, None
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()
        if selector is not None:
            with contextlib.suppress(OSError):
                selector.close()
        self._thread = self._worker = None
        self.socket_path = None

    def _unlink(self) -> None:
        path, self.socket_path = self.socket_path, None
        if path is None or os.getpid() != self.pid:
            return  # in a forked child, the socket is the parent's
        remove_socket(path, self._socket_ino)

    def _wake(self) -> None:
        w = self._wake_w
        if w is not None:
            # Full (a wake-up is already pending) or closed (stopping): either is fine.
            with contextlib.suppress(OSError):
                w.send(b"\0")

    # -- the I/O thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    self._iterate()
                except Exception:  # never let the control thread die
                    logger.exception("control: unexpected error in the listener; continuing")
                    self.stopping.wait(0.1)
        finally:
            self._close_all()

    def _iterate(self) -> None:
        selector = self._selector
        if selector is None:
            return
        now = self._clock()
        timeout = _TICK
        for c in self._clients:
            timeout = min(timeout, max(0.0, c.deadline - now))
        for key, mask in selector.select(timeout):
            target = key.data
            if target is _WAKE:
                self._drain_wake()
            elif isinstance(target, Listener):
                self._accept(target)
            elif isinstance(target, Client):
                try:
                    self._on_client(target, mask)
                except Exception:
                    logger.exception("control: error serving %s; dropping it", target.peer)
                    self._close(target)
        self._deliver()
        self._expire(self._clock())

    def _drain_wake(self) -> None:
        r = self._wake_r
        if r is None:
            return
        try:
            while r.recv(4096):
                pass
        except OSError:
            pass

    def _accept(self, listener: Listener) -> None:
        for _ in range(BACKLOG):
            try:
                sock, address = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: log, keep serving the others
                logger.warning("control: accept failed: %s", exc.strerror)
                return
            sock.setblocking(False)
            role: Role | None = None
            if listener.kind == "unix":
                try:
                    pid, uid = peer_credentials(sock)
                except OSError as exc:
                    logger.warning("control: cannot read peer credentials: %s", exc.strerror)
                    sock.close()
                    continue
                peer = f"uid {uid} pid {pid} (unix socket)"
                if not peer_allowed(uid, self._uid):
                    audit.warning("%s: refused: not uid %d or root", peer, self._uid)
                    self._reject(
                        sock,
                        "refused",
                        f"refused: this socket serves uid {self._uid} and root only",
                    )
                    continue
                role = "operator"
            else:
                peer = f"{address[0]}:{address[1]} (tcp)"
            kind = listener.kind
            # Each listener has its own limit: TCP clients (who may not even have a
            # token) never take the places of the Unix socket's.
            limit, setting = (
                (self.config.max_clients, "max_clients")
                if kind == "unix"
                else (self.config.max_tcp_clients, "max_tcp_clients")
            )
            if self._counts[kind] >= limit:
                if kind not in self._full:
                    self._full.add(kind)  # warned once per overload, not per client
                    logger.warning(
                        "control: %d %s clients connected (%s): turning others away",
                        self._counts[kind],
                        kind,
                        setting,
                    )
                logger.debug("control: %s turned away: busy", peer)
                self._reject(
                    sock,
                    "busy",
                    f"busy: {limit} {kind} clients are connected already; retry",
                )
                continue
            timeout = self.config.client_timeout
            if role is None:  # TCP: a valid token must come soon
                timeout = min(timeout, self.config.tcp_auth_timeout)
            client = Client(sock, kind, peer, role, self._clock() + timeout)
            self._clients.add(client)
            self._counts[kind] += 1
            if self._counts[kind] < limit:
                self._full.discard(kind)
            self._update(client)

    @staticmethod
    def _reject(sock: socket.socket, code: str, message: str) -> None:
        with contextlib.suppress(OSError):
            sock.send(encode_response(error_response(code, message)))
        sock.close()

    def _on_client(self, c: Client, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(c)
            if c.closed:
                return
            if not c.outbuf:
                self._process(c)
                return
        if mask & selectors.EVENT_READ:
            try:
                data = c.sock.recv(_RECV)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(c)
                return
            if data:
                c.inbuf += data
            else:
                c.eof = True
            self._process(c)

    def _process(self, c: Client) -> None:
        """Serve the complete lines buffered, one at a time, answers in order."""
        while not c.closed and not c.pending and not c.outbuf and not c.closing:
            nl = c.inbuf.find(b"\n")
            if nl < 0:
                if len(c.inbuf) > MAX_LINE:
                    self._too_long(c)
                    break
                if not c.eof:
                    break
                if not c.inbuf.strip():
                    c.closing = True
                    break
                line = bytes(c.inbuf)  # the last line, without a newline before EOF
                c.inbuf.clear()
            else:
                if nl > MAX_LINE:
                    self._too_long(c)
                    break
                line = bytes(c.inbuf[:nl])
                del c.inbuf[: nl + 1]
            self._handle_line(c, line)
        if c.closed:
            return
        if c.closing and not c.outbuf and not c.pending:
            self._close(c)
            return
        self._update(c)

    def _too_long(self, c: Client) -> None:
        logger.warning("control: %s sent a line over %d bytes; dropping it", c.peer, MAX_LINE)
        c.inbuf.clear()
        c.closing = True
        self._queue(c, error_response("too_long", f"request line over {MAX_LINE} bytes"))

    def _handle_line(self, c: Client, line: bytes) -> None:
        got = admit(c, line, self._tokens)
        if got is None:
            return
        if not isinstance(got, Admitted):
            self._queue(c, got)
            return
        if got.request.cmd == "status":
            # Reads immutable snapshots and counters only: answered at once.
            audit.debug("%s: %s", got.who, describe_request(got.request))
            self._queue(c, self._commands.run(got.request))
            return
        c.pending = True
        c.deadline = self._clock() + self.config.command_timeout
        self._jobs.put(_Job(c, got.request, got.role))

    def _queue(self, c: Client, response: Mapping[str, Any]) -> None:
        c.outbuf += encode_response(response)
        c.deadline = self._clock() + self.config.client_timeout
        self._flush(c)

    def _flush(self, c: Client) -> None:
        if not c.outbuf or c.closed:
            return
        try:
            sent = c.sock.send(c.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(c)
            return
        del c.outbuf[:sent]

    def _update(self, c: Client) -> None:
        """Watch for what the client's state needs: writing its answer, or a new line."""
        selector = self._selector
        if c.closed or selector is None:
            return
        events = 0
        if c.outbuf:
            events = selectors.EVENT_WRITE
        elif not c.pending and not c.eof and b"\n" not in c.inbuf:
            events = selectors.EVENT_READ
        if events == c.events:
            return
        if c.events == 0:
            selector.register(c.sock, events, c)
        elif events == 0:
            selector.unregister(c.sock)
        else:
            selector.modify(c.sock, events, c)
        c.events = events

    def _close(self, c: Client) -> None:
        if c.closed:
            return
        c.closed = True
        if c in self._clients:
            self._clients.discard(c)
            self._counts[c.kind] -= 1
        if c.events and self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(c.sock)
        c.events = 0
        c.sock.close()

    def _expire(self, now: float) -> None:
        for c in [c for c in self._clients if c.deadline <= now]:
            message = expiry(c, self.config)
            logger.debug("control: %s: dropped (%s)", c.peer, message or "not reading")
            if message:
                self._reject(c.sock, "timeout", message)
            self._close(c)

    def _deliver(self) -> None:
        while self._done:
            c, response = self._done.popleft()
            if c.closed:
                continue
            c.pending = False
            self._queue(c, response)
            if not c.closed and not c.outbuf:
                self._process(c)
            else:
                self._update(c)

    def _close_all(self) -> None:
        for c in list(self._clients):
            self._close(c)
        for lst in self._listeners:
            lst.sock.close()
        self._listeners = []
        selector, self._selector = self._selector, None
        if selector is not None:
            selector.close()
        for attr in ("_wake_r", "_wake_w"):
            sock = getattr(self, attr)
            setattr(self, attr, None)
            if sock is not None:
                sock.close()

    # -- the worker thread -----------------------------------------------------------

    def _work(self) -> None:
        while not self.stopping.is_set():
            try:
                job = self._jobs.get(timeout=_TICK)
            except queue.Empty:
                continue
            if job is None or self.stopping.is_set():
                return
            response = self._commands.run(job.request)
            c = job.client
            who = c.who(job.role)
            what = describe_request(job.request)
            outcome = "ok" if response.get("ok") else f"failed: {response.get('error')}"
            if COMMANDS[job.request.cmd].role == "operator":
                audit.info("%s: %s: %s", who, what, outcome)
            else:
                audit.debug("%s: %s: %s", who, what, outcome)
            self._done.append((c, response))
            self._wake()
