"""The node's data directory is private: the directory 0700, everything in it 0600 (or 0700 for folders).

It holds the identity key, ``payments.db`` (channel ids, signed vouchers, per-request token usage), the
dev platform key and the node's admin token; any local user able to read them learns who paid whom for
what, or can act as the node. Like the identity key (:func:`cocoon_node.mesh.identity.load_identity`),
the directory is checked at start and a node refuses to run on one that group or others can reach,
saying which paths and how to fix them; a missing one is created private.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["DataDirError", "exposed_paths", "secure_data_dir"]

_GROUP_OTHER = stat.S_IRWXG | stat.S_IRWXO
#: The umask a node runs under once its data directory checks out: what it creates later stays private too.
PRIVATE_UMASK = 0o077


class DataDirError(RuntimeError):
    """The data directory, or something in it, is accessible to other users."""


def exposed_paths(data_dir: Path) -> list[Path]:
    """The directory itself and every file or folder under it that group or others may access.

    Symbolic links are skipped (their own mode is always 0777; what they point to is not ours to judge).
    """
    out: list[Path] = []
    for path in (data_dir, *sorted(data_dir.rglob("*"))):
        try:
            st = path.lstat()
        except FileNotFoundError:  # removed while we walked (a temp file)
            continue
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & _GROUP_OTHER:
            out.append(path)
    return out


def secure_data_dir(data_dir: Path) -> None:
    """Create ``data_dir`` 0700 if missing; raise :class:`DataDirError` if it or anything in it is exposed.

    Then set the process umask so files the node creates afterwards (peer cache, chain state, caches)
    are private without each writer having to remember.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    exposed = exposed_paths(data_dir)
    if exposed:
        shown = ", ".join(f"{p} ({stat.S_IMODE(p.lstat().st_mode):04o})" for p in exposed[:5])
        more = f" and {len(exposed) - 5} more" if len(exposed) > 5 else ""
        raise DataDirError(
            f"data directory {data_dir} is accessible to other users: {shown}{more}; it holds the node key, "
            f"signed vouchers and token usage. Run `chmod -R go-rwx {data_dir}`"
        )
    os.umask(os.umask(PRIVATE_UMASK) | PRIVATE_UMASK)
