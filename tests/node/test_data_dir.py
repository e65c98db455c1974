"""The data directory is private: 0700, every file 0600, checked at start like the identity key."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cocoon_node.api import NodeHttp
from cocoon_node.config import load_config
from cocoon_node.node import Node
from cocoon_node.node.datadir import DataDirError, exposed_paths, secure_data_dir
from cocoon_node.payments.store import PaymentStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The usual 022 umask, as an operator's shell has it (and restored after: secure_data_dir tightens it)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_a_missing_data_dir_is_created_private(tmp_path: Path, loose_umask: None) -> None:
    d = tmp_path / "a" / "data"
    secure_data_dir(d)
    assert mode(d) == 0o700 and exposed_paths(d) == []
    # and the node's later files are private without each writer asking: the umask now masks group/others
    (d / "peers.json").write_text("{}")
    assert mode(d / "peers.json") == 0o600


def test_an_exposed_dir_or_file_is_refused_naming_it(tmp_path: Path, loose_umask: None) -> None:
    d = tmp_path / "data"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    with pytest.raises(DataDirError, match=r"data \(0755\).*chmod -R go-rwx"):
        secure_data_dir(d)
    d.chmod(0o700)
    (d / "payments.db").write_bytes(b"")
    (d / "payments.db").chmod(0o644)
    (d / "tokenizers").mkdir(mode=0o700)
    (d / "tokenizers" / "source.json").write_text("{}")
    (d / "tokenizers" / "source.json").chmod(0o640)
    with pytest.raises(DataDirError) as ei:
        secure_data_dir(d)
    assert "payments.db (0644)" in str(ei.value) and "source.json (0640)" in str(ei.value)
    (d / "payments.db").chmod(0o600)
    (d / "tokenizers" / "source.json").chmod(0o600)
    secure_data_dir(d)  # fixed: accepted


def test_payments_db_and_its_wal_are_0600_whatever_the_umask(tmp_path: Path, loose_umask: None) -> None:
    d = tmp_path / "data"
    store = PaymentStore.open(d / "payments.db")  # creating the schema writes: the WAL and its index appear
    try:
        modes = {p.name: mode(p) for p in d.iterdir()}
    finally:
        store.close()
    assert {"payments.db", "payments.db-wal", "payments.db-shm"} <= set(modes), modes
    assert mode(d) == 0o700 and set(modes.values()) == {0o600}, {f: oct(m) for f, m in modes.items()}


def test_a_node_refuses_an_exposed_data_dir(tmp_path: Path, loose_umask: None) -> None:
    d = tmp_path / "node"
    d.mkdir()
    (d / "payments.db").write_bytes(b"")
    (d / "payments.db").chmod(0o644)
    d.chmod(0o700)
    config = load_config(env={}, overrides={"node": {"data_dir": str(d)}})
    with pytest.raises(DataDirError, match=r"payments\.db"):
        Node(config, http=NodeHttp())
    assert not (d / "identity.key").exists()  # refused before anything was written
    # and `cocoon-node run` says so and exits 2, without a traceback
    out = subprocess.run([sys.executable, "-m", "cocoon_node", "run", "--data-dir", str(d), "--no-payments"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2, out.stderr
    assert "is accessible to other users" in out.stderr and "Traceback" not in out.stderr
