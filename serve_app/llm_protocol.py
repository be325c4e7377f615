"""The contract between the ingress and the LLM deployments; both sides import it.

The ingress sends an ``LLMRequest`` and decides, from the request, how the answer comes back: whole
(``complete``: one JSON body) or streamed (``stream``: server-sent-event strings, ending with
``data: [DONE]``). An error the client should see (a bad parameter, a context overflow) travels as an
``OpenAIError`` carrying its status, raised before the first chunk of a stream, so the ingress can set
the HTTP status before it commits to a stream. Any other exception is the deployment failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.requests import Endpoint


@dataclass(frozen=True)
class LLMRequest:
    endpoint: Endpoint
    body: dict[str, Any]  # the client's OpenAI body, its model set to the name the LLM serves
    stream: bool


class LLMClient:
    """The ingress's side of one LLM deployment.

    Its handles are configured once: every ``.options()`` call makes a new handle, with its own metrics
    pusher and long-poll client, so re-optioning per request costs more than the call itself.
    """

    def __init__(self, handle: Any) -> None:
        self._complete = handle.complete
        self._stream = handle.options(stream=True).stream

    def complete(self, request: LLMRequest) -> Any:
        """A response to await for the whole answer's JSON body; ``.cancel()`` stops the generation."""
        assert not request.stream
        return self._complete.remote(request)

    def stream(self, request: LLMRequest) -> Any:
        """An async iterator of SSE strings; ``.cancel()`` stops the generation."""
        assert request.stream
        return self._stream.remote(request)
