"""A real `sjc serve` for the web tests: a subprocess on a free loopback port, stopped by the test with
Ctrl-C (SIGINT) so its runs are checkpointed, then killed by pid if it does not end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(runs: Path, *args: str, timeout: float = 120.0) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    log = open(runs.parent / f"serve-{port}.log", "w")  # noqa: SIM115 (held open while the server runs)
    cmd = [sys.executable, "-m", "sjc", "serve", "--runs", str(runs), "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"sjc serve exited with {proc.returncode}: {Path(log.name).read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"sjc serve did not answer in {timeout} s: {Path(log.name).read_text()}")
            time.sleep(0.5)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def http_get(url: str) -> tuple[int, bytes]:
    """Status and body of a GET (error statuses included, no exception)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
