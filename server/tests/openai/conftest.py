"""Fixtures: the `phi3v serve` binary built by cargo, started on a free loopback port with the
tiny Phi-3.5-vision checkpoint on the CPU, and official `openai` clients pointed at it.

The binary is `target/debug/phi3v` (built by `cargo test --workspace` or
`cargo build -p phi3v-cli`), or the path in PHI3V_BIN. A missing binary fails the tests: it
never skips them.
"""

import os
import pathlib
import queue
import signal
import subprocess
import threading

import openai
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
MODEL = ROOT / "tests" / "fixtures" / "models" / "phi35v-tiny"
IMAGES = ROOT / "tests" / "fixtures" / "images"
API_KEY = "test-key-123"
MAX_IMAGES = 2
MAX_BODY_BYTES = 1_000_000


def phi3v_bin() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("PHI3V_BIN", ROOT / "target" / "debug" / "phi3v"))
    if not path.is_file():
        pytest.fail(f"{path} not found: build it first (cargo build -p phi3v-cli)")
    return path


class Server:
    """A `phi3v serve` process and its base URL."""

    def __init__(self, proc: subprocess.Popen, url: str):
        self.proc = proc
        self.url = url
        self.model = MODEL.name

    def client(self, api_key: str = API_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=120)


def start_server(*extra_args: str) -> Server:
    """Starts `phi3v serve` on a free loopback port and waits for its address on stdout."""
    cmd = [str(phi3v_bin()), "serve", "--model", str(MODEL), "--device", "cpu", "--host", "127.0.0.1", "--port", "0", *extra_args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout], daemon=True).start()
    url = None
    try:
        while url is None:
            line = lines.get(timeout=180)
            if line.startswith("listening on "):
                url = line.split("listening on ", 1)[1].strip()
    except queue.Empty:
        proc.kill()
        pytest.fail(f"phi3v serve did not start: {proc.stderr.read()}")
    assert url.startswith("http://127.0.0.1:"), url
    return Server(proc, url)


def stop_server(server: Server, sig=signal.SIGINT) -> int:
    """Sends `sig` and returns the exit code (fails if the process does not stop)."""
    server.proc.send_signal(sig)
    try:
        return server.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        pytest.fail(f"phi3v serve did not stop on {sig!r}")


@pytest.fixture(scope="session")
def server():
    s = start_server("--api-key", API_KEY, "--max-images", str(MAX_IMAGES), "--max-body-bytes", str(MAX_BODY_BYTES))
    yield s
    # Graceful shutdown on SIGINT: the process exits 0.
    code = stop_server(s)
    assert code == 0, s.proc.stderr.read()


@pytest.fixture(scope="session")
def client(server):
    return server.client()
