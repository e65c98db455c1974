"""HTTP surfaces of the node: the OpenAI-compatible requester API and the local admin endpoint.

- :mod:`.openai_api`: ``/v1/chat/completions`` (JSON and SSE streaming, OpenAI error shape) and
  ``/v1/models`` over a :class:`~cocoon_node.inference.requester.Requester`; :mod:`.completions`
  (``/v1/completions``, ``/v1/models/{id}``) and :mod:`.client_gone` (cancel when the client leaves) beside it;
- :mod:`.admin`: ``GET /status`` behind the per-run admin token;
- :mod:`.http`: hypercorn on trio, reporting the bound URL;
- :mod:`.surfaces`: :class:`NodeHttp`, the three above as the node's :class:`~cocoon_node.node.HttpSurfaces`
  (handed to :class:`~cocoon_node.node.Node` by the process entry points: this package sits above the node).
"""

from cocoon_node.api.admin import admin_app
from cocoon_node.api.http import serve_http
from cocoon_node.api.openai_api import openai_app
from cocoon_node.api.surfaces import NodeHttp

__all__ = ["NodeHttp", "admin_app", "openai_app", "serve_http"]
