"""Test helper: the real server as a child process, for tests/test_service_e2e.py and bench/load.py.

    from tests.server_process import ServerProcess

    with ServerProcess({"MLLM_AUDIT_MAX_BATCH_SIZE": "8"}) as server:
        httpx.post(server.url + "/v1/reliance", json=...)

It starts `python -m mllm_audit.service.cli serve` on 127.0.0.1 and a free port, waits until /health
answers 200 (every model worker loaded), and stops it with SIGTERM (the service's graceful
shutdown), killing its process group only if it does not exit in time.

It lives with the tests, not in the installed package: nothing in the service uses it. Importing
it needs the repository root on sys.path (pytest's rootdir; bench/load.py puts it there itself).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    def __init__(
        self,
        env: dict[str, str] | None = None,
        port: int | None = None,
        log_path: Path | None = None,
        startup_timeout: float = 180.0,
        health_headers: dict[str, str] | None = None,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.health_headers = health_headers or {}
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="mllm-audit-server-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> ServerProcess:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "MLLM_AUDIT_HOST": "127.0.0.1",
            "MLLM_AUDIT_PORT": str(self.port),
            **self.env,
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mllm_audit.service.cli", "serve"],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status = httpx.get(self.url + "/health", headers=self.health_headers, timeout=2).status_code
                if status == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"the server did not become healthy in {self.startup_timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self._close_log()
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        try:  # whatever is left of the process group this class started (its own session)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict]:
        """The server's JSON log lines, parsed (anything else, e.g. a traceback, left out)."""
        return [json.loads(line) for line in self.log_text().splitlines() if line.startswith("{")]

    def group_gone(self, timeout: float = 15.0) -> bool:
        """Whether every process of the server's group (its own session) has exited within `timeout` s."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
