"""Every workflow example of docs/workflows.md is accepted by the real API, so the guide cannot drift from
what ``POST /api/workflows`` takes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.support import TenantHandle

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "workflows.md"
JSON_BLOCK = re.compile(r"^```json\n(.*?)^```", re.DOTALL | re.MULTILINE)


def json_blocks() -> list[Any]:
    """Every ```json block of the guide, parsed (a block that is not valid JSON fails here)."""
    return [json.loads(block) for block in JSON_BLOCK.findall(GUIDE.read_text(encoding="utf-8"))]


def workflows() -> list[dict[str, Any]]:
    """The blocks that are workflows (the others are trigger configs, shown with placeholder ids)."""
    return [b for b in json_blocks() if isinstance(b, dict) and "steps" in b and "name" in b]


def test_the_guide_has_its_examples() -> None:
    names = {w["name"] for w in workflows()}
    assert len(names) >= 8, names
    assert {"process invoice", "monthly sales report", "nightly clean-up", "check purchase request",
            "request approval"} <= names


@pytest.mark.parametrize("workflow", workflows(), ids=lambda w: str(w["name"]))
async def test_each_workflow_example_is_accepted(
    client: httpx.AsyncClient, tenant: TenantHandle, workflow: dict[str, Any]
) -> None:
    r = await client.post("/api/workflows", json=workflow, headers=tenant.headers)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == workflow["name"]
