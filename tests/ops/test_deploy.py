"""The deployment files: compose validates (when a docker CLI can), manifests hold what operations rely on."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ORQ_SERVICES = {"api", "executor", "projector", "trigger", "notifier"}


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def _compose_cli() -> list[str] | None:
    """``docker compose`` (v2: the file uses the Compose Specification, which the old v1 tool predates)."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


def test_docker_compose_config_validates() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose CLI on this machine")
    env = {**os.environ, "ORQ_ADMIN_TOKEN": "test-token"}
    result = subprocess.run([*cli, "-f", str(DEPLOY / "docker-compose.yml"), "config"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "notifier" in result.stdout


def test_compose_runs_every_service_with_health_checks() -> None:
    services = _compose()["services"]
    assert set(services) == {"redis", "mariadb", *ORQ_SERVICES}
    assert services["executor"]["deploy"]["replicas"] == 2
    assert all("healthcheck" in services[name] for name in ("redis", "mariadb"))
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "HEALTHCHECK" in dockerfile  # the orq services' health check comes with the image
    for name in ORQ_SERVICES:
        assert services[name]["command"][0] == name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "./redis.conf:/usr/local/etc/redis/redis.conf:ro" in services["redis"]["volumes"]


def test_redis_conf_is_durable_and_never_evicts() -> None:
    lines = {line.split()[0]: line.split()[1:] for line in (DEPLOY / "redis.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")}
    assert lines["appendonly"] == ["yes"]
    assert lines["appendfsync"] == ["everysec"]
    assert lines["maxmemory-policy"] == ["noeviction"]


def test_dockerfile_is_slim_and_runs_as_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert all(line.split()[1].endswith("-slim") for line in text.splitlines() if line.startswith("FROM"))
    user = [line.split()[1] for line in text.splitlines() if line.startswith("USER")]
    assert user and user[-1] not in {"0", "root"}


def test_kubernetes_manifests() -> None:
    docs = [d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds.count("Deployment") == 5
    assert {"Service", "ConfigMap", "Secret", "HorizontalPodAutoscaler"} <= set(kinds)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {f"orquesta-{s}" for s in ORQ_SERVICES}
    for d in deployments.values():
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["containers"][0]["livenessProbe"]["httpGet"]["path"] == "/healthz"
    [hpa] = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "orquesta-executor"
    names = {m.get("pods", m.get("external", {})).get("metric", {}).get("name") for m in hpa["spec"]["metrics"]}
    assert names == {"orq_executor_slots_busy_ratio", "orq_consumer_group_lag"}
    kustomize = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert set(kustomize["resources"]) == {f.name for f in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
