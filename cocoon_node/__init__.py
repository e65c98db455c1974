"""cocoon-node: one symmetric Trio node for confidential, paid AI inference over libp2p."""

__version__ = "0.1.0"
