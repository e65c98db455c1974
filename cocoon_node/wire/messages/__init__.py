"""Typed declarations of the messages of ``protocols/*.toml``: one module per protocol.

Each module mirrors one TOML file and lists its types in ``MESSAGES`` (TOML message name -> type), which
``tests/wire/test_types_match_toml.py`` compares field by field with the TOML. They live in the wire
package so that every package (attestation, mesh, inference, payments) can import them.

- :mod:`.attestation`: the attestation report's envelope, record and claims, and dev-INSECURE evidence;
- :mod:`.envelope`: the domain-bound signed envelope of every other signed record;
- :mod:`.dialback`: the dial-back frames of reachability checks (declared; the runtime still uses the validator).
"""
