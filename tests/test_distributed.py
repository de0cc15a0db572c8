"""The communicator and the gradient buffer in one process, and the scaling benchmark under ``mpiexec -n 2``."""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import backprop as bp
from backprop.data_parallel import DataParallel, GradientBuffer
from backprop.distributed import Communicator
from backprop.gradients import loss_and_backward
from tests.mpi_launch import _mpiexec, cases, needs_mpi, run_under_timeout


@needs_mpi
def test_scaling_benchmark_reports_speed_up_and_communication_share(tmp_path):
    output, returncode, timed_out = run_under_timeout(
        [_mpiexec(), "-n", "2", sys.executable, "-m", "benchmarks.scaling", "--quick", "--output", str(tmp_path)])
    assert returncode == 0 and not timed_out, output[-4000:]
    result = json.loads((tmp_path / "scaling-2ranks-quick.json").read_text())["result"]
    assert result["ranks"] == 2 and result["speed_up"] > 0
    shares = result["shares_of_fastest_round"]
    assert set(shares) == {"compute", "staging", "allreduce", "update"}
    assert abs(sum(shares.values()) - 1) < 1e-9 and all(value >= 0 for value in shares.values())
    assert "Speed-up (fastest rounds)" in (tmp_path / "scaling-2ranks-quick.md").read_text()


# -- in one process -------------------------------------------------------------------------------------------
def ranks_of(size: int) -> list[Communicator]:
    members = []
    for rank in range(size):
        member = Communicator()
        member.rank, member.size = rank, size
        members.append(member)
    return members


@given(st.integers(1, 9), st.integers(0, 40))
def test_rows_are_contiguous_balanced_and_cover_the_batch(size, count):
    shards = [member.rows(count) for member in ranks_of(size)]
    assert shards[0][0] == 0 and shards[-1][1] == count
    assert all(a[1] == b[0] for a, b in itertools.pairwise(shards))
    lengths = [stop - start for start, stop in shards]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def test_size_one_communicator_without_mpi4py(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    comm = bp.distributed.init()
    assert (type(comm), comm.rank, comm.size, comm.local_rank, comm.is_root) == (Communicator, 0, 1, 0, True)
    assert comm.device("cuda") == "cuda:0" and comm.device("torch:cuda") == "torch:cuda:0"
    assert comm.device("cpu") == "cpu" and comm.device("array_api_strict:device1") == "array_api_strict:device1"
    with pytest.raises(bp.errors.ConfigurationError, match="without it"):
        comm.device("cuda:1")
    monkeypatch.setenv("PMI_SIZE", "4")
    with pytest.raises(bp.errors.ConfigurationError, match=r"mpi4py is not installed.*\[mpi\]"):
        bp.distributed.init()


def test_size_one_collectives_are_the_identity():
    comm = Communicator()
    buffer = np.arange(4.0)
    assert comm.allreduce(buffer) is buffer and buffer.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert comm.broadcast_text("héllo") == "héllo"
    assert comm.any(True) and not comm.any(False)
    comm.check_same({"seed": 0})
    comm.raise_together(None)
    with pytest.raises(KeyError, match="mine"):
        comm.collectively(lambda: {}["mine"])
    with pytest.raises(bp.errors.ConfigurationError, match="C-contiguous host NumPy"):
        comm.allreduce(np.arange(6.0)[::2])


def test_gradient_buffer_scales_flags_and_restores():
    """pack writes share * grad and a flag per parameter; unpack gives back the reduced gradients and leaves a
    parameter that no rank reached without one."""
    model = cases.network()
    x, labels, _ = cases.data()
    loss_and_backward(model, bp.losses.CrossEntropy(), x, labels)
    parameters = model.parameters()
    expected = [np.array(p.grad) * 0.25 for p in parameters]
    parameters[-1].zero_grad()
    buffer = GradientBuffer(parameters, np.float64)
    assert not buffer.sum(Communicator(), 0.25, False, model.backend)
    for parameter, gradient in zip(parameters[:-1], expected):
        assert np.array_equal(parameter.grad, gradient)
    assert not parameters[-1].has_grad
    assert buffer.buffer.size == sum(p.value.size for p in parameters) + len(parameters) + 1


def with_batch_statistics(kind: str) -> tuple[bp.Sequential, int]:
    """A model with a ``kind`` layer, and its number of classes."""
    if kind == "BatchNorm2d":
        return bp.Sequential(bp.BatchNorm2d(1), bp.Flatten(), bp.Dense(16, 2), input_shape=(1, 4, 4), seed=0), 2
    return cases.network(bp.BatchNorm1d(8)), cases.CLASSES


@pytest.mark.parametrize("kind", ["BatchNorm1d", "BatchNorm2d"])
def test_layers_with_batch_statistics_are_refused_for_more_than_one_process(kind):
    model, classes = with_batch_statistics(kind)
    with pytest.raises(bp.errors.ConfigurationError, match=f"{kind}.*synchronised batch"):
        DataParallel(ranks_of(2)[0], model, local=None)
    x = np.random.default_rng(0).normal(size=(6, *model.input_shape))
    history = model.fit(x, np.arange(6) % classes, bp.losses.CrossEntropy(), bp.optim.SGD(model.parameters(), lr=0.1),
                        epochs=1, verbose=0, communicator=Communicator())  # one process may use it
    assert np.isfinite(history.history["loss"][0])
