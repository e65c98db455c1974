"""netsim: run scripted scenarios (workload, faults, churn, junk gossip) against a real local cocoon cluster.

Nodes are real ``cocoon-node run`` processes (or, for large scenarios, host-pool processes holding many
nodes each) on 127.0.0.1, so what is measured is the real code path: OpenAI API -> mesh -> worker.

netsim sits above all of cocoon_node (the layer contracts in pyproject.toml): it imports the node's public
faces, the node never imports it. Everything NETSIM-ONLY reaches a node from outside, through netsim's own
entry points (:mod:`.node`, :mod:`.pool`, the rogue modules), never through a production flag.

- a run: :mod:`.cli` (``cocoon-netsim``) -> :mod:`.runner` (thin orchestrator) over :mod:`.context`
  (shared state), :mod:`.lifecycle`, :mod:`.faults`, :mod:`.observation`, :mod:`.settlement`,
  :mod:`.workload`, recorded in :mod:`.simdata` and written up by :mod:`.report` (adversaries' verdicts in
  :mod:`.rogue_report`); scenarios parsed by
  :mod:`.scenario` from ``netsim/scenarios/*.toml``;
- node entry points: :mod:`.node` (an honest node with shaped links and/or a skewed clock), :mod:`.pool`
  (many nodes in one process), :mod:`.procs` (process control over :class:`cocoon_node.cluster.Cluster`);
- links: :mod:`.links` and the :mod:`.shaping` package (the shaped TCP transport injected into the mesh);
  with a ``[topology]``: :mod:`.topology`, :mod:`.netns`, :mod:`.nscluster`, :mod:`.nsforward`, :mod:`.natsim`;
- adversaries (NETSIM-ONLY, each in its own module): :mod:`.adversary` (fake upstream, junk flooder),
  :mod:`.rogue` (rogue nodes, where every kind is registered), :mod:`.lowball`, :mod:`.misnamed`,
  :mod:`.paycheats`.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
