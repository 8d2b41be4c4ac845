"""Ray for the package's parallel work (``xdreamer report --ray``, World Models' CMA-ES with ``train --ray``): one
way to start or join a cluster, with one-line errors instead of Ray's pages of retries."""

from __future__ import annotations

import socket

INSTALL_HINT = "pip install 'xdreamer[report]' (or 'ray>=2.9')"


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail in seconds, not after Ray's minutes of retries, when nothing listens at ``host:port``."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--ray-address must be HOST:PORT (or ray://HOST:PORT, or auto), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ValueError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def start(address: str | None, what: str = "--ray", num_cpus: int = 2):
    """``(ray, started)``: the ``ray`` module, initialised on the cluster at ``address`` or, without one, on a local
    Ray of ``num_cpus`` CPUs (no dashboard); ``started`` says whether this call started it (then the caller shuts it
    down). Already initialised: left as it is."""
    try:
        import ray
    except ImportError:
        raise ValueError(f"{what} needs Ray: {INSTALL_HINT}") from None
    if address:
        check_reachable(address)
    if ray.is_initialized():
        return ray, False
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as exc:  # one line, not Ray's multi-page traceback
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"cannot connect to the Ray cluster at {address}: {first}") from None
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return ray, True
