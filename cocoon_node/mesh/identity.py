"""The node's Ed25519 identity, persisted in its data directory.

The peer id is derived from this key, and attestation reports bind it, so losing or leaking it changes who
the node is: the file is created with mode 0600 and a key that others can read is refused outright.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

IDENTITY_FILE = "identity.key"


class IdentityError(RuntimeError):
    """The identity file is unreadable, malformed or exposed to other users."""


def identity_path(data_dir: Path) -> Path:
    return data_dir / IDENTITY_FILE


def generate_identity(data_dir: Path, *, overwrite: bool = False) -> KeyPair:
    """Create a fresh key in ``data_dir`` (mode 0600); refuses to clobber one unless asked."""
    path = identity_path(data_dir)
    if path.exists() and not overwrite:
        raise IdentityError(f"{path} already exists; refusing to replace the node's identity")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # the data dir is private (node/datadir.py)
    private = Ed25519PrivateKey.new()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private.to_bytes())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return KeyPair(private, private.get_public_key())


def load_identity(data_dir: Path) -> KeyPair:
    """Load the key, refusing one that group or others may read."""
    path = identity_path(data_dir)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise IdentityError(f"no identity at {path}; run `cocoon-node keygen`") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"{path} is accessible to other users (mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
        )
    raw = path.read_bytes()
    try:
        private = Ed25519PrivateKey.from_bytes(raw)
    except Exception as exc:
        raise IdentityError(f"{path} does not hold an Ed25519 key: {exc}") from exc
    return KeyPair(private, private.get_public_key())


def load_or_create_identity(data_dir: Path) -> KeyPair:
    if identity_path(data_dir).exists():
        return load_identity(data_dir)
    return generate_identity(data_dir)


def peer_id_of(key_pair: KeyPair) -> ID:
    return ID.from_pubkey(key_pair.public_key)
