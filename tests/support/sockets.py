"""Which TCP ports a process tree listens on, and which of them reach beyond loopback (psutil).

>>> exposed_listeners(os.getpid())  # doctest: +SKIP
[]
"""

from __future__ import annotations

import psutil

from runtime.loopback import is_loopback


def listeners(root_pid: int) -> list[tuple[str, int, int, str]]:
    """``(ip, port, pid, process name)`` for every listening TCP socket of ``root_pid`` and its descendants."""
    root = psutil.Process(root_pid)
    names = {root.pid: root.name()}
    for child in root.children(recursive=True):
        try:
            names[child.pid] = child.name()
        except psutil.NoSuchProcess:
            pass
    return sorted((c.laddr.ip, c.laddr.port, c.pid, names[c.pid]) for c in psutil.net_connections(kind="tcp")
                  if c.status == psutil.CONN_LISTEN and c.pid in names)


def exposed_listeners(root_pid: int) -> list[tuple[str, int, int, str]]:
    """The listeners of the tree that are reachable from other hosts (not bound to loopback)."""
    return [row for row in listeners(root_pid) if not is_loopback(row[0])]
