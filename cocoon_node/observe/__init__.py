"""Seeing the node: Prometheus metrics, the dashboard page, start-up causes and progress reports.

Module map (each module is small and has one concern; this package imports nothing from ``node``, ``api``
or ``cli``, which import it):

- ``metrics``        the node's Prometheus registry: request/latency/token events, and the status snapshot's
                     facts (workers, gossip, attestation, DHT, payments) read at scrape time
- ``timing``         where request events come from: an ASGI wrapper and a wrapper of the requester's stream
- ``surface``        ``/metrics`` and ``/dashboard`` (login form, one-time links, sessions) beside an app
- ``dashboard_data`` the JSON the dashboard page polls, cut from the same snapshot and metric totals
- ``static/``        the page itself: HTML, CSS and a little JavaScript, nothing fetched from the internet
- ``startup``        start-up failures as one-line causes naming the flag or command that fixes them
- ``progress``       phases of long waits (model loading, cluster stages) as log lines or a terminal bar
"""

from cocoon_node.observe.metrics import CONTENT_TYPE, NodeMetrics
from cocoon_node.observe.surface import DashboardAccess, observed_surface
from cocoon_node.observe.timing import ObservedHTTP, ObservedRequester

__all__ = ["CONTENT_TYPE", "DashboardAccess", "NodeMetrics", "ObservedHTTP", "ObservedRequester",
           "observed_surface"]
