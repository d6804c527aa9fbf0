"""Helpers for the front-door tests: free ports and scripts run as real server processes."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx
from conftest import REPO_ROOT


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """Run ``python <script> <args>`` in the repo root and wait until ``ready_path`` answers 200."""

    def __init__(self, script, args, port, env, ready_path="/", startup_timeout=120.0):
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile(mode="w+", suffix=".log", prefix="server-", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / script), *args, "--port", str(port)],
            cwd=str(REPO_ROOT), env=env, stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{script} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"{script} did not start in {startup_timeout}s:\n{self.output()}")
            time.sleep(0.3)

    def output(self) -> str:
        self.log.flush()
        with open(self.log.name, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        os.unlink(self.log.name)
        return False
