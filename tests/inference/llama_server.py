"""Start llama.cpp's OpenAI-compatible server (llama-cpp-python's, built by ``just llama-server`` into
``.venv/llama-server``) on the SmolLM2 GGUF, offline, on an ephemeral 127.0.0.1 port: a real upstream that
nobody here wrote, for the tests and ``bench/bench_upstream.py``.

The process is ours alone: started here, signalled by its PID, reaped on the way out. Its log (uvicorn's
lines, llama.cpp's timings, the server's "Disconnected from client" notices) is kept for the tests to read.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
SERVER_PYTHON = ROOT / ".venv" / "llama-server" / "bin" / "python"
MODEL = "SmolLM2-135M-Instruct"
OPT_OUT = "COCOON_NO_LLAMA_SERVER"
_PORT_LINE = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)")


FAILED_MARKER = ROOT / ".venv" / "llama-server.failed"  # written by `just llama-server` when its build fails


def missing_reason() -> str | None:
    """Why the server cannot run here (a clear skip reason), or None.

    ``just setup`` builds it and does not fail when the build does: the build's own reason (first line of
    the marker it writes) is given, so a skipped run says what went wrong and how to retry."""
    if os.environ.get(OPT_OUT) == "1":
        return f"{OPT_OUT}=1: this machine opted out of llama.cpp's server"
    if SERVER_PYTHON.is_file():
        return None
    if FAILED_MARKER.is_file():
        first = (FAILED_MARKER.read_text(errors="replace").splitlines() or ["(no reason recorded)"])[0]
        return (f"llama.cpp's server could not be built by `just setup`: {first} (details in {FAILED_MARKER}; "
                f"retry with `just llama-server`)")
    return (f"llama.cpp's server is not installed ({SERVER_PYTHON} is missing): run `just llama-server` "
            f"(`just setup` does it)")


@dataclass
class LlamaServer:
    process: subprocess.Popen[bytes]
    base_url: str  # ``http://127.0.0.1:PORT/v1``
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def llama_server(log_path: Path, *, interrupt_requests: bool = False, n_ctx: int = 2048,
                 timeout: float = 120.0) -> Iterator[LlamaServer]:
    """Run the server until the block ends. ``interrupt_requests`` is the server's own default (a new
    request cuts a running stream); a worker's upstream should run without it."""
    from cocoon_node.inference.torch_cpu import default_model_path

    reason = missing_reason()
    if reason is not None:
        raise RuntimeError(reason)
    threads = str(max(1, min(2, len(os.sched_getaffinity(0)))))
    cmd = [str(SERVER_PYTHON), "-m", "llama_cpp.server", "--model", str(default_model_path()),
           "--model_alias", MODEL, "--host", "127.0.0.1", "--port", "0", "--n_ctx", str(n_ctx),
           "--n_threads", threads, "--n_threads_batch", threads,
           "--interrupt_requests", str(interrupt_requests)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        base = _wait_ready(process, log_path, timeout)
        yield LlamaServer(process, base, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _wait_ready(process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> str:
    """Bounded: the port from uvicorn's start line, then /v1/models answering."""
    deadline = time.monotonic() + timeout
    base = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited ({process.returncode}):\n"
                               + log_path.read_text(errors="replace")[-3000:])
        if base is None and (m := _PORT_LINE.search(log_path.read_bytes())):
            base = f"http://127.0.0.1:{int(m.group(1))}/v1"
        if base is not None:
            try:
                if httpx.get(base + "/models", timeout=5).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
        time.sleep(0.1)  # polling another process's start-up; no outcome depends on this pace
    raise RuntimeError(f"llama.cpp server not ready after {timeout} s:\n"
                       + log_path.read_text(errors="replace")[-3000:])


if __name__ == "__main__":  # a manual check: start it and print the URL
    with llama_server(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/llama-server.log")) as srv:
        print(srv.base_url, flush=True)
        srv.process.wait()
