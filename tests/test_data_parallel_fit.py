"""Data-parallel ``fit`` on MPI: pytest launches ``mpiexec -n 2`` and ``-n 3`` itself, under a hard timeout (a hang
fails), runs tests/distributed_cases.py there, and compares what every rank ends with against single-process
``fit`` computed here (float64: rtol 1e-12) and against each other (bit for bit)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

import backprop as bp
from backprop.distributed import Communicator
from backprop.gradients import loss_and_backward
from tests.mpi_launch import (
    ROOT,
    Launch,
    _mpiexec,
    cases,
    launch,
    needs_mpi,
    run_under_timeout,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The launches, each made once, when a test first asks for it."""
    made: dict = {}

    def get(ranks: int | None, *arguments: str) -> Launch:
        key = (ranks, arguments)
        if key not in made:
            made[key] = launch(tmp_path_factory.mktemp(f"ranks{ranks}"), ranks, *arguments)
        return made[key]

    return get


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Single-process results of the cases (``comm=None``), each computed once."""
    computed: dict = {}
    folder = tmp_path_factory.mktemp("single")

    def get(name: str) -> dict:
        if name not in computed:
            previous = os.environ.get("DISTRIBUTED_CASES_DIR")
            os.environ["DISTRIBUTED_CASES_DIR"] = str(folder)
            try:
                computed[name] = json.loads(json.dumps(cases.CASES[name](None)))
            finally:
                if previous is None:
                    del os.environ["DISTRIBUTED_CASES_DIR"]
                else:
                    os.environ["DISTRIBUTED_CASES_DIR"] = previous
        return computed[name]

    return get


def assert_matches(result: dict, expected: dict, rtol: float) -> None:
    """Same History, parameters, optimiser slots and state, random states; floats to ``rtol``."""
    assert result["error"] == expected["error"]
    assert result["optimizer"] == expected["optimizer"]
    assert result["random_states"] == expected["random_states"]
    assert result["history"]["epoch"] == expected["history"]["epoch"]
    assert set(result["history"]) == set(expected["history"])
    for name, values in expected["history"].items():
        np.testing.assert_allclose(result["history"][name], values, rtol=rtol, atol=0, err_msg=f"history {name}")
    for group in ("parameters", "slots"):
        assert set(result[group]) == set(expected[group])
        for name, values in expected[group].items():
            np.testing.assert_allclose(result[group][name], values, rtol=rtol, atol=1e-15, err_msg=f"{group} {name}")


def assert_identical_replicas(results: list[dict]) -> None:
    for rank, result in enumerate(results[1:], start=1):
        for key in ("parameters", "slots", "optimizer", "random_states", "history", "error"):
            assert result[key] == results[0][key], f"rank {rank}'s {key} differ from rank 0's"


EXACT = ["sgd_momentum", "adam", "second_device", "convolution", "small_batch", "penalty", "dropout", "class_weights",
         "clipping", "early_stopping"]


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("name", EXACT)
def test_ranks_equal_single_process_fit(runs, reference, name, ranks):
    results = runs(ranks).results(name)
    assert_identical_replicas(results)
    assert results[0]["history"] is not None, results[0]["error"]
    assert_matches(results[0], reference(name), rtol=1e-12)


@needs_mpi
def test_small_batches_leave_ranks_without_rows_and_dropout_masks_in_step(runs, reference):
    """Batches of 2 on 3 ranks: rank 2 never has rows, yet its dropout generator ends where one process's does."""
    results = runs(3).results("small_batch")
    assert results[2]["random_states"] == reference("small_batch")["random_states"]
    assert any(state is not None for state in results[2]["random_states"])


@needs_mpi
def test_clipping_acts_on_the_reduced_gradient(runs, reference):
    """The optimiser clips before each update, so it sees the summed gradient: the same steps clip as in one
    process (every step of this case does), and the parameters agree (test_ranks_equal_single_process_fit)."""
    expected = reference("clipping")["clipped"]
    assert expected == 12
    assert [result["clipped"] for result in runs(3).results("clipping")] == [expected] * 3


@needs_mpi
def test_early_stopping_stops_every_rank_at_the_single_process_epoch(runs, reference):
    results = runs(3).results("early_stopping")
    expected = reference("early_stopping")
    assert expected["stopped_epoch"] is not None  # the case does stop early
    assert [r["stopped_epoch"] for r in results] == [expected["stopped_epoch"]] * 3


@needs_mpi
def test_float32_on_two_ranks_equals_the_two_shard_oracle_bitwise(runs):
    results = runs(2).results("float32")
    assert_identical_replicas(results)
    expected = two_shard_oracle()
    for name, values in expected.items():
        assert np.array_equal(np.asarray(results[0]["parameters"][name], dtype=np.float32), values), name


def two_shard_oracle() -> dict[str, np.ndarray]:
    """The float32 case in one process: each global batch's two shards' gradients, each scaled by its share,
    summed (as MPI sums two buffers), then the update; the same batches as fit(seed=0)."""
    x, _, targets = cases.data("float32")
    model = cases.network(dtype="float32")
    optimizer = bp.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss = bp.losses.MeanSquaredError()
    rng = np.random.default_rng(0)
    halves = [Communicator(), Communicator()]
    halves[1].rank = 1
    for communicator in halves:
        communicator.size = 2
    for _ in range(3):
        order = rng.permutation(cases.SAMPLES)
        xs, ys = x[order], targets[order]
        for start in range(0, cases.SAMPLES, 10):
            xb, yb = xs[start:start + 10], ys[start:start + 10]
            total = None
            for communicator in halves:
                first, last = communicator.rows(len(xb))
                loss_and_backward(model, loss, xb[first:last], yb[first:last], prepared=True)
                share = (last - first) / len(xb)
                scaled = [p.grad * share for p in model.parameters()]
                total = scaled if total is None else [a + b for a, b in zip(total, scaled)]
            for parameter, gradient in zip(model.parameters(), total):
                parameter.grad = gradient
            optimizer.step()
    return model.state_dict()


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_unseeded_replicas_start_from_rank_0s_weights_and_one_shuffling_seed(runs, ranks):
    results = runs(ranks).results("unseeded")
    assert len({result["initial"] for result in results}) == ranks  # each rank drew its own weights
    assert_identical_replicas(results)
    assert results[0]["history"]["epoch"] == [0, 1]


@needs_mpi
def test_communicator_ranks_on_one_node(runs):
    facts = [result["facts"] for result in runs(3).results("communicator")]
    assert facts == [[rank, 3, rank, rank == 0, f"cuda:{rank}", "cpu"] for rank in range(3)]


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_stop_training_on_one_rank_stops_every_rank(runs, ranks):
    results = runs(ranks).results("stop_on_one_rank")
    assert_identical_replicas(results)
    assert results[0]["history"]["epoch"] == [0, 1]


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_nan_on_one_rank_is_divergence_on_every_rank(runs, ranks):
    results = runs(ranks).results("nan_on_one_rank")
    assert_identical_replicas(results)  # the state restored at the start of the epoch too
    kind, message = results[0]["error"]
    assert kind == "DivergenceError" and "epoch 2 of 3, batch 3 of 4" in message


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_rank_dependent_seed_is_refused_on_every_rank(runs, ranks):
    results = runs(ranks).results("seed_per_rank")
    assert all(r["error"][0] == "ConfigurationError" and "seed" in r["error"][1] for r in results)
    assert all(r["parameters"] == results[0]["parameters"] for r in results)  # nothing trained


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_bad_data_on_one_rank_is_refused_on_every_rank(runs, ranks):
    results = runs(ranks).results("bad_data_on_one_rank")
    for result in results:
        kind, message = result["error"]
        assert kind == "NonFiniteError" and "training inputs contains 1 NaN" in message, message
    assert "raised on rank 1" in results[0]["error"][1]


@needs_mpi
def test_a_bad_validation_split_on_one_rank_is_refused_on_every_rank(runs):
    results = runs(3).results("bad_split_on_one_rank")
    assert all(r["error"][0] == "ConfigurationError" and "validation_split" in r["error"][1] for r in results)
    assert "raised on rank 1 of 3" in results[0]["error"][1]


@needs_mpi
def test_error_in_validation_on_one_rank_is_raised_on_every_rank(runs):
    results = runs(3).results("validation_error_on_one_rank")
    assert all(r["error"][0] == "TargetError" and "on rank 1" in r["error"][1] for r in results)


@needs_mpi
def test_batchnorm_is_refused(runs):
    for result in runs(2).results("batchnorm"):
        kind, message = result["error"]
        assert kind == "ConfigurationError" and "BatchNorm1d" in message and "LayerNorm" in message


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_only_rank_0_writes_checkpoints_and_resuming_equals_uninterrupted(runs, reference, ranks):
    run = runs(ranks)
    results = run.results("checkpoint_and_resume")
    assert_identical_replicas(results)
    assert results[0]["writers"] == ["rank 0 wrote epoch0.bpk", "rank 0 wrote epoch1.bpk"]
    assert all(r["writers"] == [] for r in results[1:])
    assert results[0]["files"] == ["epoch0.bpk", "epoch1.bpk"]  # no temporary files left behind
    uninterrupted = run.results("uninterrupted")[0]
    for key in ("parameters", "slots", "optimizer", "random_states"):
        assert results[0][key] == uninterrupted[key], key
    assert_matches(uninterrupted, reference("uninterrupted"), rtol=1e-12)


@needs_mpi
def test_a_checkpoint_rank_0_cannot_write_stops_every_rank(runs):
    results = runs(3).results("unwritable_checkpoint")
    assert results[0]["error"][0] == "CheckpointError" and "does not exist" in results[0]["error"][1]
    assert all(r["error"] == [results[0]["error"][0], results[0]["error"][1] + " [raised on rank 0 of 3]"]
               for r in results[1:])
    assert_identical_replicas([{**r, "error": None} for r in results])


@needs_mpi
def test_only_rank_0_prints_progress(runs, reference):
    results = runs(2).results("progress_lines")
    assert results[0]["printed"] == reference("progress_lines")["printed"]
    assert results[0]["printed"].count("\n") == 3 and results[1]["printed"] == ""


@needs_mpi
def test_only_rank_0_warns(runs, reference):
    assert reference("warning_on_root")["warnings"] == ["LossActivationWarning"]
    assert [r["warnings"] for r in runs(3).results("warning_on_root")] == [["LossActivationWarning"], [], []]


@needs_mpi
def test_size_one_without_mpiexec_is_bitwise_fit(runs, reference):
    result, = runs(None, "size_one").results("size_one")
    assert result["size"] == 1
    expected = reference("size_one")
    assert {k: v for k, v in result.items() if k != "size"} == {k: v for k, v in expected.items() if k != "size"}


@needs_mpi
def test_injected_bug_fails_the_comparison_and_does_not_hang(runs, reference):
    """Weighting every rank by 1 / size instead of its share of the batch must be caught, not hang."""
    run = runs(3, "--inject-bug", *EXACT)
    assert not run.timed_out and run.returncode == 0, run.output[-4000:]
    caught = 0
    for name in EXACT:
        try:
            assert_matches(run.results(name)[0], reference(name), rtol=1e-12)
        except AssertionError:
            caught += 1
    assert caught == len(EXACT)



def test_a_size_one_communicator_changes_nothing_in_fit():
    x, labels, _ = cases.data()
    histories = []
    for communicator in (None, Communicator()):
        model = cases.network(bp.Dropout(0.3))
        history = model.fit(x, labels, bp.losses.CrossEntropy(), bp.optim.Adam(model.parameters(), lr=0.01),
                            epochs=2, batch_size=10, seed=0, verbose=0, communicator=communicator)
        histories.append((history.history, model.state_dict()))
    assert histories[0][0] == histories[1][0]
    assert all(np.array_equal(histories[0][1][k], histories[1][1][k]) for k in histories[0][1])


@needs_mpi
def test_example_prints_the_same_training_in_one_and_in_two_processes(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sklearn", reason="the example trains on scikit-learn's digits")
    script = ROOT / "examples" / "data_parallel.py"
    output, returncode, timed_out = run_under_timeout(
        [_mpiexec(), "-n", "2", sys.executable, str(script), "--epochs", "2"], cwd=tmp_path)
    assert returncode == 0 and not timed_out, output[-4000:]
    assert (tmp_path / "data_parallel_best.bpk").exists()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # here, in one process: init() is the size-1 communicator
    spec = importlib.util.spec_from_file_location("example_data_parallel", script)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(["--epochs", "2"])
    one, two = capsys.readouterr().out.splitlines(), output.splitlines()
    assert one[0].startswith("digits on 1 process(es)") and two[0].startswith("digits on 2 process(es)")
    assert one[1:] == two[1:] and len(two) == 4  # rank 0 alone printed: two epochs and the best checkpoint
