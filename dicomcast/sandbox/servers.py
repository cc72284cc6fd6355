"""Start a real Orthanc and a real FHIR server (sekmet-fhir) on 127.0.0.1, for the demo,
the integration tests and the benchmark: free ports, fresh data folders, stopped by PID."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

ORTHANC_BIN = os.environ.get("DICOMCAST_ORTHANC_BIN", "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = os.environ.get(
    "DICOMCAST_ORTHANC_DICOMWEB", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
)
REPO = Path(__file__).resolve().parents[2]


# Below Linux's ephemeral range (32768-60999): a port bound with 0 comes from that range,
# where any outgoing connection of a busy test run may take it before the server binds it.
PORTS = range(20000, 32768)
_given: set[int] = set()  # never the same port twice from one process


def free_port() -> int:
    """A port nothing listens on now, for a server about to start on it."""
    for _ in range(200):
        port = PORTS[secrets.randbelow(len(PORTS))]
        if port in _given:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    with socket.socket() as sock:  # the range is busy: any port the kernel gives
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_taken(log: Path) -> bool:
    """The server's log says its port was taken between `free_port` and its start."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return "already in use" in text.lower()


def _wait(url: str, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer {url} within {timeout} s")


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class OrthancServer:
    """A throw-away Orthanc with the DICOMweb plugin (unless `dicomweb` is False);
    `stable_age` in seconds. Started again on the same folder, it keeps its studies."""

    def __init__(
        self,
        folder: Path,
        *,
        stable_age: int = 2,
        user: tuple[str, str] | None = None,
        modalities: dict[str, list[Any]] | None = None,
        dicomweb: bool = True,
    ):
        self.folder = folder
        self.modalities = (
            modalities or {}
        )  # DICOM peers it may C-STORE to: name -> [AE, host, port]
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.stable_age = stable_age
        self.user = user
        self.dicomweb = dicomweb  # False: started as if its DICOMweb plugin were lost
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = False  # once up, its ports are kept: tests hold its URLs

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicom_url(self) -> str:
        """Its DIMSE address (AE title ORTHANC), as a DIMSE source's url."""
        return f"dicom://127.0.0.1:{self.dicom_port}"

    def start(self, attempts: int = 3) -> OrthancServer:
        config_dir = self.folder / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "Name": "dicomcast-test",
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            # Orthanc is also a DIMSE PACS for the tests: it answers C-FIND from anyone, at
            # every level, reading attributes its index lacks from the stored files.
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckCalledAet": False,
            "StorageAccessOnFind": "Always",
            # C-FIND answers in this character set; Orthanc's default (Latin-1) would turn a
            # Japanese name's ideographic and phonetic groups into nothing.
            "DefaultEncoding": "Utf8",
            "DicomModalities": self.modalities,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": self.user is not None,
            "StableAge": self.stable_age,
            "Plugins": [DICOMWEB_PLUGIN] if self.dicomweb else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        if self.user:
            config["RegisteredUsers"] = {self.user[0]: self.user[1]}
        (config_dir / "orthanc.json").write_text(json.dumps(config))
        log = self.folder / "orthanc.log"
        log.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [ORTHANC_BIN, f"--logfile={log}", str(config_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        try:
            self._wait_until_up(log)
        except BaseException:
            _stop(self.proc)  # what was started is stopped, on every path
            if not self.started and port_taken(log) and attempts > 1:
                # Taken since it was chosen (by another test process): other ports. Only
                # at the first start: a restart keeps its URLs, which tests hold.
                self.http_port, self.dicom_port = free_port(), free_port()
                return self.start(attempts - 1)
            raise
        self.started = True
        return self

    def _wait_until_up(self, log: Path) -> None:
        assert self.proc is not None
        auth = httpx.BasicAuth(*self.user) if self.user else None
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}; see {log}")
            try:
                if httpx.get(f"{self.url}/system", auth=auth, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start; see {log}")
            time.sleep(0.1)

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        _stop(self.proc)

    def discard(self) -> None:
        """End a server whose folder is thrown away next: at once (SIGKILL). A graceful
        stop takes Orthanc about 3.3 s (its HTTP server alone 2 s), which every test
        paid; what it would save is in a folder nobody reads again."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def client(self) -> httpx.Client:
        auth = httpx.BasicAuth(*self.user) if self.user else None
        return httpx.Client(base_url=self.url, auth=auth, timeout=60)

    def upload(self, payloads: list[bytes]) -> list[dict[str, Any]]:
        with self.client() as http:
            answers = []
            for payload in payloads:
                response = http.post(
                    "/instances", content=payload, headers={"Content-Type": "application/dicom"}
                )
                response.raise_for_status()
                answers.append(response.json())
            return answers


def sekmet_command() -> list[str]:
    """Where the FHIR server's entry point is: $DICOMCAST_SEKMET, the repo's .venv-fhir, PATH."""
    configured = os.environ.get("DICOMCAST_SEKMET")
    if configured:
        return [configured]
    local = REPO / ".venv-fhir" / "bin" / "sekmet"
    if local.exists():
        return [str(local)]
    found = shutil.which("sekmet")
    if found:
        return [found]
    raise RuntimeError(
        "sekmet-fhir is not installed: run ./scripts/test (it installs it into .venv-fhir) "
        "or set DICOMCAST_SEKMET to its `sekmet` executable"
    )


class FhirServer:
    """A throw-away sekmet-fhir (FHIR R4) with its hospital simulator off."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = False  # once up, its port is kept: tests hold its URL

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def start(self, attempts: int = 3) -> FhirServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        settings = self.folder / "sekmet.yaml"
        settings.write_text(
            f"base_url: {self.url}\nhost: 127.0.0.1\nport: {self.port}\n"
            f"data_dir: {self.folder / 'data'}\nsimulator:\n  enabled: false\nlog_inbound: false\n"
        )
        log = self.folder / "sekmet.log"
        env = {**os.environ, "SEKMET_CONFIG": str(settings), "SEKMET_BASE_URL": self.url}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*sekmet_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.folder,
            )
        try:
            _wait(f"{self.url}/metadata", self.proc, "sekmet-fhir", log, timeout=60)
        except BaseException:
            _stop(self.proc)  # what was started is stopped, on every path
            if not self.started and port_taken(log) and attempts > 1:
                self.port = free_port()  # taken since chosen: another (first start only)
                return self.start(attempts - 1)
            raise
        self.started = True
        return self

    def __enter__(self) -> FhirServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        _stop(self.proc)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url + "/", timeout=60, headers={"Accept": "application/fhir+json"}
        )
