"""Run the dashboard: bind the socket, say where it is, open the browser, serve until interrupted."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import sys
import threading
import webbrowser
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from weightslab.errors import ConfigError
from weightslab.ui.app import LOOPBACK_HOSTS, create_app

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, *, extra: Sequence[str] = ()) -> list[str]:
    """The ``Host`` names requests may use: loopback, the bound address, this machine's names, ``extra``.

    Never a wildcard: a web page whose DNS name is rebound to this server's address sends its own
    name as ``Host`` and is refused, also when the server listens beyond loopback.
    """
    names = [*LOOPBACK_HOSTS, host.strip("[]"), *extra]
    if not is_loopback(host):
        names += [socket.gethostname(), socket.getfqdn()]
        if host in ("0.0.0.0", "::"):  # every address of this machine
            with contextlib.suppress(OSError):
                names += socket.gethostbyname_ex(socket.gethostname())[2]
    return list(dict.fromkeys(n for n in names if n and n not in ("0.0.0.0", "::")))


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port); raises ConfigError naming the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        hint = "pick another with --port" if port else "check --host"
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); {hint}") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(
    source: str,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    open_browser: bool = True,
    hub_repo: str | None = None,
    hub_options: dict[str, Any] | None = None,
    allow_hosts: Sequence[str] = (),
    out: TextIO | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the dashboard of ``source`` on ``host:port`` until interrupted (Ctrl-C).

    Prints ``weightslab: serving SOURCE at URL`` once the socket listens. Requests must name the
    server by a name of :func:`allowed_hosts` (``allow_hosts`` adds more, e.g. a DNS name). Listening beyond loopback
    prints a warning: anyone who can reach the address can read, and with the page's token change,
    the root.
    """
    import uvicorn

    out = out or sys.stdout
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    url = f"http://{shown}:{bound_port}/"
    allowed = allowed_hosts(host, extra=allow_hosts)
    if not is_loopback(host):
        sys.stderr.write(
            f"weightslab: warning: listening on {host}, not only on this machine: anyone who can reach "
            f"{url} can read these checkpoints and run actions from the page; use --host 127.0.0.1 "
            "unless that is what you want\n"
        )
    app = create_app(source, hub_repo=hub_repo, allowed_hosts=allowed, hub_options=hub_options)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)

    def announce() -> None:
        out.write(f"weightslab: serving {source} at {url}\n")
        out.write("weightslab: press Ctrl-C to stop\n")
        out.flush()
        if on_ready is not None:
            on_ready(url)
        if open_browser:
            webbrowser.open(url)

    threading.Thread(target=_when_started, args=(server, announce), daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def _when_started(server: Any, then: Callable[[], None]) -> None:
    import time

    while not server.started and not server.should_exit:
        time.sleep(0.02)
    if server.started:
        then()


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "bind", "is_loopback", "serve"]
