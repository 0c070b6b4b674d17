"""Traces: with OTEL_EXPORTER_OTLP_ENDPOINT set, an execution and its steps reach a real OTLP/HTTP receiver."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from redis.asyncio import Redis

from shared.domain import commit_script
from shared.log.workflows import StepDef, WorkflowDef
from tests.executor.seed import PARTITIONS, queue, seed_workflow, status
from tests.helpers import REDIS_URL, assert_eventually
from tests.processes import OrqProcess, orq_env, orq_processes

pytestmark = pytest.mark.slow
TENANT = "tenant-traced"


class Receiver(BaseHTTPRequestHandler):
    spans: list[tuple[str, dict[str, object]]] = []

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                for s in scope.spans:
                    attrs = {a.key: a.value.string_value or a.value.int_value for a in s.attributes}
                    Receiver.spans.append((s.name, attrs))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.spans = []
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_execution_and_step_spans_are_exported(redis: Redis, receiver: str, tmp_path: Path) -> None:
    committer = commit_script.committer(redis)
    definition = WorkflowDef(name="traced", steps=[StepDef(action="noop"), StepDef(action="set",
                                                                                   params={"values": {"a": 1}})])
    workflow = await seed_workflow(committer, TENANT, definition)
    env = orq_env(ORQ_REDIS_URL=REDIS_URL, ORQ_PARTITIONS=str(PARTITIONS), OTEL_EXPORTER_OTLP_ENDPOINT=receiver,
                  OTEL_BSP_SCHEDULE_DELAY="100")
    with orq_processes() as procs:
        procs.append(OrqProcess(["executor"], env, tmp_path / "executor.log"))
        [execution_id] = await queue(committer, workflow, definition)

        async def completed() -> bool:
            return (await status(redis, TENANT, execution_id)).get("status") == "completed"

        await assert_eventually(completed, timeout=15, message="completed")

        async def exported() -> bool:
            names = [name for name, attrs in Receiver.spans if attrs.get("execution_id") == execution_id]
            return sorted(names) == ["execution", "step", "step"]

        await assert_eventually(exported, timeout=15, message="spans exported")
    await committer.close()


def test_no_endpoint_means_no_tracing() -> None:
    from shared.infra.tracing import configure_tracing

    assert configure_tracing("", "api") is False
