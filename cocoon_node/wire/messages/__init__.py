"""Typed declarations of the messages of ``protocols/*.toml``: one module per protocol.

Each module mirrors one TOML file and lists its types in ``MESSAGES`` (TOML message name -> type), which
``tests/wire/test_types_match_toml.py`` compares field by field with the TOML. They live in the wire
package so that every package (attestation, mesh, inference, payments) can import them.

- :mod:`.attestation`: the attestation report's envelope, record and claims, and dev-INSECURE evidence;
- :mod:`.envelope`: the domain-bound signed envelope of every other signed record;
- :mod:`.inference`: the frames of a direct inference stream (a tagged union on ``t``, with its ``CODEC``);
- :mod:`.channel`: the frames of cooperative channel close (likewise);
- :mod:`.dialback`: the frames of reachability by dial-back (likewise);
- :mod:`.attest`: the frames of fresh, nonce-bound attestation (likewise);
- :mod:`.announce`: the gossiped worker announcement and its hardware (canonical CBOR), with the v1/v2/v3 rules;
- :mod:`.receipt`: the signed receipt of a completed request.
"""

#: Stream protocols whose frames are declared here: a FrameStream takes the module's ``CODEC``, never the
#: protocol's name (which would give dicts checked by ``wire.schema``).
TYPED_FRAME_PROTOCOLS = frozenset({"inference", "channel", "dialback", "attest"})
