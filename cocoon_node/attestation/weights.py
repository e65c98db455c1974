"""Model weight hash: one 32-byte identity for a model directory, cheap to recompute at startup.

Construction (version 1)::

    H = SHA-256(b"cocoon/model-hash/v1\\0" ||
                for each file, sorted by relative POSIX path (UTF-8 bytes):
                    u64be(len(path)) || path || u64be(size) || SHA-256(content))

Content enters through its own SHA-256 so a per-file digest can be cached by
(absolute path, size, mtime_ns) in a small JSON file; a multi-GB model is then read only when a
file changed. Caveat: a rewrite that keeps both size and mtime_ns would be missed by the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_DOMAIN = b"cocoon/model-hash/v1\x00"
_CHUNK = 1 << 20


def _files(root: Path) -> list[tuple[str, Path]]:
    if root.is_file():
        return [(root.name, root)]
    if not root.is_dir():
        raise FileNotFoundError(f"model path {root} does not exist")
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_file():  # follows symlinks (Hugging Face snapshots link into blobs/)
                out.append((p.relative_to(root).as_posix(), p))
    return out


def _load_cache(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) and data.get("version") == 1 else None
    return entries if isinstance(entries, dict) else {}


def _save_cache(path: Path, entries: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"version": 1, "entries": entries}, sort_keys=True))
    os.replace(tmp, path)


def _file_digest(p: Path) -> bytes:
    h = hashlib.sha256()
    with p.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.digest()


def model_hash(
    path: Path | str,
    *,
    files: Iterable[str] | None = None,
    cache_path: Path | str | None = None,
) -> bytes:
    """Hash a model directory (all regular files, recursively) or a single file.

    ``files`` restricts the hash to these paths relative to ``path`` (e.g. only the weight and
    tokenizer files). ``cache_path`` names the JSON digest cache; it is never itself hashed.
    """
    root = Path(path)
    cache_file = Path(cache_path) if cache_path is not None else None
    if files is None:
        listing = _files(root)
    else:
        listing = [(Path(rel).as_posix(), root / rel) for rel in files]
    if cache_file is not None:
        resolved = cache_file.resolve()
        listing = [(rel, p) for rel, p in listing if p.resolve() != resolved]
    listing.sort(key=lambda item: item[0].encode("utf-8"))

    cache = _load_cache(cache_file)
    fresh: dict[str, Any] = {}
    h = hashlib.sha256(_DOMAIN)
    for rel, p in listing:
        st = p.stat()
        key = str(p.resolve())
        hit = cache.get(key)
        if isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
            digest = bytes.fromhex(hit["sha256"])
        else:
            digest = _file_digest(p)
        fresh[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest.hex()}
        rel_b = rel.encode("utf-8")
        h.update(len(rel_b).to_bytes(8, "big") + rel_b + st.st_size.to_bytes(8, "big") + digest)
    if cache_file is not None and fresh != {k: cache.get(k) for k in fresh}:
        with contextlib.suppress(OSError):
            _save_cache(cache_file, {**cache, **fresh})
    return h.digest()
