"""hello-py: a Spin app in Python (componentize-py and Spin's Python SDK),
laid out as Spin's http-py template lays it out. Each request adds one to the
`hits` key of the default key-value store and answers with it."""

from spin_sdk import http, key_value
from spin_sdk.http import Request, Response


class HttpHandler(http.Handler):
    async def handle_request(self, request: Request) -> Response:
        with await key_value.open_default() as store:
            hits = int((await store.get("hits") or b"0").decode()) + 1
            await store.set("hits", str(hits).encode())
        body = f"Hello from Python! Visit {hits}, {request.method} {request.uri}\n"
        return Response(200, {"content-type": "text/plain"}, body.encode())
