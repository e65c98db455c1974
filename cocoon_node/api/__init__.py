"""HTTP surfaces of the node: the OpenAI-compatible requester API and the local admin endpoint."""

from cocoon_node.api.admin import admin_app
from cocoon_node.api.http import serve_http
from cocoon_node.api.openai_api import openai_app

__all__ = ["admin_app", "openai_app", "serve_http"]
