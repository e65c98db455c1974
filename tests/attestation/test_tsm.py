"""configfs-tsm provider: the absent path for real, the exchange against a fake kernel tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from cocoon_node.attestation import ConfigfsTsm, TsmError, get_tdx_quote


def test_absent_gives_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TsmError, match="configfs-tsm not available"):
        get_tdx_quote(bytes(64), tsm_root=tmp_path / "nope")


def test_default_path_absent_here() -> None:
    if Path("/sys/kernel/config/tsm/report").is_dir():  # pragma: no cover - a real TDX guest
        pytest.skip("running on a host with configfs-tsm")
    with pytest.raises(TsmError, match="not available"):
        get_tdx_quote(bytes(64))


def test_report_data_length() -> None:
    with pytest.raises(TsmError, match="64 bytes"):
        get_tdx_quote(bytes(32))


class FakeKernel(ConfigfsTsm):
    """Emulates configfs: mkdir populates the entry; writing inblob bumps generation and makes outblob."""

    def __init__(self, root: Path, provider: str = "tdx_guest", meddle: bool = False) -> None:
        super().__init__(root)
        self.provider = provider
        self.meddle = meddle
        self.ops: list[str] = []

    def _mkdir(self, path: Path) -> None:
        self.ops.append(f"mkdir {path.name}")
        super()._mkdir(path)
        (path / "provider").write_text(self.provider + "\n")
        (path / "generation").write_text("0\n")
        (path / "inblob").write_bytes(b"")

    def _write(self, path: Path, data: bytes) -> None:
        self.ops.append(f"write {path.name} {len(data)}")
        super()._write(path, data)
        gen = path.parent / "generation"
        bump = 2 if self.meddle else 1
        gen.write_text(f"{int(gen.read_text()) + bump}\n")
        (path.parent / "outblob").write_bytes(b"QUOTE:" + data)

    def _read(self, path: Path) -> bytes:
        self.ops.append(f"read {path.name}")
        return super()._read(path)

    def _rmdir(self, path: Path) -> None:
        self.ops.append("rmdir")
        for f in path.iterdir():  # configfs removes attributes itself
            f.unlink()
        super()._rmdir(path)


def test_fake_tree_sequence(tmp_path: Path) -> None:
    k = FakeKernel(tmp_path)
    rd = bytes(range(64))
    assert k.get_quote(rd) == b"QUOTE:" + rd
    assert [op.split()[0] + (" " + op.split()[1] if " " in op else "") for op in k.ops] == [
        f"mkdir {k.ops[0].split()[1]}",
        "read provider",
        "read generation",
        "write inblob",
        "read outblob",
        "read generation",
        "rmdir",
    ]
    assert k.ops[3] == "write inblob 64"
    assert list(tmp_path.iterdir()) == []  # entry removed


def test_fake_tree_wrong_provider(tmp_path: Path) -> None:
    k = FakeKernel(tmp_path, provider="sev_guest")
    with pytest.raises(TsmError, match="sev_guest"):
        k.get_quote(bytes(64))
    assert "write inblob 64" not in k.ops and k.ops[-1] == "rmdir"
    assert list(tmp_path.iterdir()) == []


def test_fake_tree_concurrent_writer(tmp_path: Path) -> None:
    k = FakeKernel(tmp_path, meddle=True)
    with pytest.raises(TsmError, match="concurrently"):
        k.get_quote(bytes(64))
    assert list(tmp_path.iterdir()) == []
