"""platform-py: a probe built on WASI 0.3's last release candidate
(`@0.3.0-rc-2026-03-15`), the interfaces spin-sdk 5 for Python was first
built against. It exports the release candidate's `wasi:http/handler` and
calls its clocks, random, environment and filesystem, and answers with what
it saw as JSON, so a test can check each value the host gave it."""

import json

from componentize_py_types import Ok
import componentize_py_async_support
from wit_world import (
    exports,
    byte_stream,
    result_option_wasi_http_types_fields_wasi_http_types_error_code_future as trailers_future,
    result_unit_wasi_http_types_error_code_future as unit_future,
)
from wit_world.imports import environment, monotonic_clock, preopens, random, system_clock
from wit_world.imports.wasi_filesystem_types import DescriptorFlags, OpenFlags, PathFlags
from wit_world.imports.wasi_http_types import Fields, Request, Response


async def read_all(rx) -> bytes:
    data = bytearray()
    with rx:
        while not rx.writer_dropped:
            data += await rx.read(16 * 1024)
    return bytes(data)


async def read_file(name: str):
    for directory, mount in preopens.get_directories():
        if mount == "/":
            file = await directory.open_at(PathFlags(0), name, OpenFlags(0), DescriptorFlags.READ)
            rx, _done = file.read_via_stream(0)
            return (await read_all(rx)).decode()
    return None


async def write(body: bytes, tx) -> None:
    with tx:
        await tx.write_all(body)


class Handler(exports.Handler):
    async def handle(self, request: Request) -> Response:
        path = request.get_path_with_query() or "/"
        rx, _trailers = Request.consume_body(request, unit_future(lambda: Ok(None))[1])
        received = await read_all(rx)

        started = monotonic_clock.now()
        await monotonic_clock.wait_for(2_000_000)
        waited = monotonic_clock.now() - started

        seen = {
            "path": path,
            "received": len(received),
            "waited_ns": waited,
            "system_seconds": system_clock.now().seconds,
            "random": random.get_random_bytes(16).hex(),
            "env": dict(environment.get_environment()),
            "preopens": [mount for _, mount in preopens.get_directories()],
            "file": await read_file("probe.txt"),
        }
        body = json.dumps(seen).encode()
        tx, contents = byte_stream()
        componentize_py_async_support.spawn(write(body, tx))
        headers = Fields.from_list(
            [("content-type", b"application/json"), ("content-length", str(len(body)).encode())]
        )
        response = Response.new(headers, contents, trailers_future(lambda: Ok(None))[1])[0]
        response.set_status_code(200)
        return response
