"""Start Orthanc with its DICOMweb plugin on loopback, as the peer to measure against.

tests/test_orthanc.py starts the same Orthanc, with ``DicomWeb.Servers`` naming our
service, to drive the plugin's DICOMweb client against it.

Configuration choices (docs/benchmark.md, "Fairness"): Debian's defaults, made
explicit where they matter, except for what our local stack does not pay for either:

- ``SyncStorageArea: true`` (the default): fsync after each file. Azurite, which holds
  our files locally, also calls fdatasync after writing blob data.
- ``StorageCompression: false`` (the default): files are stored as received, like ours.
- ``HttpCompressionEnabled: false``: no gzip of answers; on loopback it only costs CPU,
  and our server does not compress.
- ``DicomServerEnabled: false``: no DICOM (DIMSE) listener, only HTTP.
- Everything that changes answers stays at its default (``StorageAccessOnFind:
  Always``, DICOMweb ``StudiesMetadata``/``SeriesMetadata: Full``), so Orthanc
  answers as completely as it does out of the box.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.process import BenchmarkError, Server, stop, wait_until_answers
from dicom_core.local.azurite import free_port

PACKAGES = ("orthanc", "orthanc-dicomweb")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_ROOT = "/dicom-web/"


def is_installed() -> bool:
    """Whether the Orthanc executable and its DICOMweb plugin are both present."""
    return shutil.which("Orthanc") is not None and DICOMWEB_PLUGIN.exists()


def ensure_orthanc_installed() -> None:
    """Install Orthanc and its DICOMweb plugin with apt-get when they are missing.

    The Debian package also registers a system-wide Orthanc service (ports 8042 and
    4242); the benchmark does not use it and starts its own instance on free ports.
    """
    if is_installed():
        return
    if os.geteuid() != 0:
        raise BenchmarkError(
            "Orthanc is not installed and installing it needs root: run "
            "`sudo apt-get install -y orthanc orthanc-dicomweb`, or `python -m bench --only ours`"
        )
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    print(f"Orthanc is missing: {' '.join(install)}")
    if subprocess.run(install, env=environment, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=environment, check=False)
        if subprocess.run(install, env=environment, check=False).returncode != 0:
            raise BenchmarkError(f"`{' '.join(install)}` failed; see its output above")
    if not is_installed():
        raise BenchmarkError(f"apt-get installed {' '.join(PACKAGES)} but Orthanc or {DICOMWEB_PLUGIN} is missing")


def configuration(data: Path, http_port: int, dicomweb_servers: dict[str, object] | None = None) -> dict[str, object]:
    """Orthanc's JSON configuration for one run (see the module docstring).

    ``dicomweb_servers`` is the plugin's ``DicomWeb.Servers``: the DICOMweb servers its
    client may call, by name (the benchmark names none).
    """
    return {
        "Name": "dicom-bench",
        "StorageDirectory": str(data / "storage"),
        "IndexDirectory": str(data / "index"),
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "DicomServerEnabled": False,
        "StorageCompression": False,
        "SyncStorageArea": True,
        "HttpCompressionEnabled": False,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "SaveJobs": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT, "EnableWado": False, "Servers": dicomweb_servers or {}},
    }


@contextmanager
def running(data: Path, dicomweb_servers: dict[str, object] | None = None) -> Iterator[Server]:
    """Run a fresh Orthanc keeping its files in ``data``; stop it on exit.

    ``dicomweb_servers`` goes to ``DicomWeb.Servers`` (see ``configuration``).
    """
    ensure_orthanc_installed()
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = data / "orthanc.json"
    config.write_text(json.dumps(configuration(data, port, dicomweb_servers), indent=2))
    log = data / "orthanc.log"
    with open(log, "ab") as output:
        process = subprocess.Popen(["Orthanc", str(config)], stdout=output, stderr=subprocess.STDOUT)
    try:
        root = f"http://127.0.0.1:{port}"
        system = wait_until_answers(f"{root}/system", process, log, ready=lambda r: r.status_code == 200)
        plugin = httpx.get(f"{root}/plugins/dicom-web", timeout=5.0)
        if plugin.status_code != 200:
            raise BenchmarkError(f"Orthanc started without its DICOMweb plugin:\n{plugin.text}")
        version = f"Orthanc {system.json()['Version']}, DICOMweb plugin {plugin.json()['Version']}"
        yield Server("orthanc", root + DICOMWEB_ROOT.rstrip("/"), version, data, processes=(process.pid,))
    finally:
        stop(process)


def rest_root(server: Server) -> str:
    """The root of Orthanc's own REST API (``/instances``, ``/studies``...), which holds the DICOMweb root."""
    return server.base_url.removesuffix(DICOMWEB_ROOT.rstrip("/"))
