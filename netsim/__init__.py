"""netsim: run scripted scenarios (workload, faults, churn, junk gossip) against a real local cocoon cluster.

Nodes are real ``cocoon-node run`` processes (or, for large scenarios, host-pool processes holding many
nodes each) on 127.0.0.1, so what is measured is the real code path: OpenAI API -> mesh -> worker.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
