"""Launching MPI jobs from the tests: ``mpiexec`` found beside the Python executable (the MPICH wheel puts it there)
or on PATH, each job in its own process group under a hard timeout, so a hang fails instead of blocking CI."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES_FILE = Path(__file__).with_name("distributed_cases.py")
TIMEOUT = 90  # seconds for one whole launch (all cases); the cases take ~3 s on 2 busy cores


def _load_cases():
    spec = importlib.util.spec_from_file_location("distributed_cases", CASES_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cases = _load_cases()


def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _mpi_missing() -> str | None:
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed: pip install '.[mpi]' (mpi4py and the MPICH wheel)"
    if _mpiexec() is None:
        return "no mpiexec on PATH or beside the Python executable: pip install '.[mpi]' (the MPICH wheel has one)"
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=str(_mpi_missing()))


@dataclass
class Launch:
    folder: Path
    ranks: int
    output: str
    returncode: int | None
    timed_out: bool

    def results(self, name: str) -> list[dict]:
        """Every rank's result of case ``name``; fails with the launch's output if any is missing."""
        found = []
        for rank in range(self.ranks):
            path = self.folder / f"{name}.{rank}.json"
            if not path.exists():
                why = f"timed out after {TIMEOUT} s (a hang)" if self.timed_out else f"exited with {self.returncode}"
                pytest.fail(f"rank {rank} of {self.ranks} left no result for {name!r}: the launch {why}.\n"
                            f"{self.output[-4000:]}")
            result = json.loads(path.read_text())
            if "crashed" in result:
                pytest.fail(f"case {name!r} raised on rank {rank} of {self.ranks}: {result['crashed']}")
            found.append(result)
        return found


def run_under_timeout(command: list[str], cwd: Path = ROOT) -> tuple[str, int | None, bool]:
    """(output, return code, timed out): ``command`` in its own process group, all of it killed after TIMEOUT s."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                               env=environment, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
        return output, process.returncode, False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.communicate()[0], None, True


def launch(folder: Path, ranks: int | None, *arguments: str) -> Launch:
    """The cases under ``mpiexec -n ranks`` (``ranks=None``: plain python, no launcher), under the timeout."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(CASES_FILE), str(folder), *arguments]
    if ranks is not None:
        command = [_mpiexec(), "-n", str(ranks), *command]
    return Launch(folder, ranks or 1, *run_under_timeout(command))
