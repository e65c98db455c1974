"""model_hash: deterministic, path- and size-sensitive, cached by (path, size, mtime_ns)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from cocoon_node.attestation import model_hash
from cocoon_node.attestation import weights as weights_mod


def _model(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "sub" / "w.bin").write_bytes(b"\x01" * 1000)
    return root


def test_known_construction(tmp_path: Path) -> None:
    m = _model(tmp_path / "m")
    h = hashlib.sha256(b"cocoon/model-hash/v1\x00")
    for rel, data in [("config.json", b'{"a": 1}'), ("sub/w.bin", b"\x01" * 1000)]:
        r = rel.encode()
        h.update(len(r).to_bytes(8, "big") + r + len(data).to_bytes(8, "big") + hashlib.sha256(data).digest())
    assert model_hash(m) == h.digest()
    assert model_hash(m, files=["sub/w.bin", "config.json"]) == h.digest()  # order given does not matter


def test_sensitive_to_path_and_content(tmp_path: Path) -> None:
    m = _model(tmp_path / "m")
    base = model_hash(m)
    (m / "sub" / "w.bin").rename(m / "sub" / "w2.bin")
    assert model_hash(m) != base
    (m / "sub" / "w2.bin").rename(m / "sub" / "w.bin")
    assert model_hash(m) == base
    (m / "sub" / "w.bin").write_bytes(b"\x02" * 1000)
    assert model_hash(m) != base


def test_cache_hit_skips_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = _model(tmp_path / "m")
    cache = tmp_path / "cache.json"
    first = model_hash(m, cache_path=cache)
    assert json.loads(cache.read_text())["version"] == 1
    calls: list[Path] = []
    real = weights_mod._file_digest

    def counting(p: Path) -> bytes:
        calls.append(p)
        return real(p)

    monkeypatch.setattr(weights_mod, "_file_digest", counting)
    assert model_hash(m, cache_path=cache) == first and calls == []
    w = m / "sub" / "w.bin"
    w.write_bytes(b"\x03" * 1000)
    os.utime(w, ns=(1, 1))  # new mtime -> re-read
    assert model_hash(m, cache_path=cache) != first and calls == [w]


def test_cache_inside_model_dir_is_not_hashed(tmp_path: Path) -> None:
    m = _model(tmp_path / "m")
    plain = model_hash(m)
    assert model_hash(m, cache_path=m / ".cocoon-hash-cache.json") == plain
    assert model_hash(m, cache_path=m / ".cocoon-hash-cache.json") == plain


def test_single_file_and_missing(tmp_path: Path) -> None:
    f = tmp_path / "model.gguf"
    f.write_bytes(b"gguf")
    assert len(model_hash(f)) == 32
    with pytest.raises(FileNotFoundError):
        model_hash(tmp_path / "absent")
