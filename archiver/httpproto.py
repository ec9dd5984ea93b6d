"""uvicorn's httptools protocol, answering a request it cannot parse in JSON like every error.

A request line or header that httptools refuses (malformed, or too large: a 1 MB token in
the query) never reaches the app: uvicorn answers it itself with a plain-text
``Invalid HTTP request received.``. Every other error of the service is JSON with a
sentence, and clients (the widget, a host site's code) parse it as such, so this protocol
writes the same 400 as JSON. It is passed to uvicorn as ``http=`` (``uvicorn.Config``
takes a protocol class there).

Divergence #11 (ARCHITECTURE.md): this subclasses a uvicorn internal,
``HttpToolsProtocol.send_400_response``;
tests/test_security.py::test_a_1_mb_token_in_the_query_string_is_refused_before_the_app
pins its behaviour, so an upgrade that changes it fails a test rather than silently
answering in plain text again. (``serve --reload`` keeps uvicorn's plain-text 400.)
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .logs import log

BODY = json.dumps(
    {
        "error": "bad_request",
        "detail": "The request could not be read: its request line or headers are malformed "
        "or too large.",
    }
).encode()


class JsonErrorsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        # The same bytes as uvicorn's, but JSON; and nothing of the request is logged (the
        # request line is what was too large, and it may hold a token).
        client = self.client[0] if self.client else None
        log.info(
            "request.rejected", error="bad_request", status=400, reason="unparseable", client=client
        )
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend(
            [
                b"content-type: application/json\r\n",
                b"x-content-type-options: nosniff\r\n",
                b"content-length: " + str(len(BODY)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                BODY,
            ]
        )
        self.transport.write(b"".join(head))
        self.transport.close()
