"""The benchmark suite runs end to end, the hot path's fast paths equal their array-API references, and a
training loop holds its memory flat. Timings are recorded, never asserted."""

from __future__ import annotations

import json
import math
import tracemalloc

import numpy as np
import pytest

import backprop as bp
from backprop.gradients import loss_and_backward
from benchmarks import run
from benchmarks.workloads import QUICK_WORKLOADS, our_step


def reference_backend(spec: str) -> bp.backends.Backend:
    """The same backend with every optional fast path removed: the array-API reference."""
    fast = bp.get_backend(spec)
    return bp.backends.Backend(fast.spec, fast.xp, fast.device)


# -- the suite ------------------------------------------------------------------------------------------------
def test_quick_suite_reports_every_workload(tmp_path):
    report = run.main(["--quick", "--repeats", "1", "--output", str(tmp_path)])
    written = json.loads((tmp_path / "cpu-quick.json").read_text())
    assert [result["workload"] for result in written["results"]] == list(QUICK_WORKLOADS)
    expected = {"ours", "floor"} | ({"pytorch", "ours_torch"} if run.torch_available() else set())
    for result in written["results"]:
        assert set(result["candidates"]) == expected
        for candidate in result["candidates"].values():
            for key in ("median_s", "fastest_s"):
                assert math.isfinite(candidate[key]) and candidate[key] > 0
        assert result["ratios"]["ours/floor"] > 0
        counted = result["operations"]
        assert counted["ours_adam"] > counted["ours_sgd"] > 0
    assert written["environment"]["device"] == "cpu" and written["environment"]["blas"]["numpy"]
    assert "| 4x[2,4,1] sigmoid mse float64 |" in (tmp_path / "cpu-quick.md").read_text()
    assert report["results"][0]["label"] == written["results"][0]["label"]


def test_several_runs_report_each_ratios_spread(tmp_path):
    """``--runs 2``: the spread of each ratio is the lowest and highest of the two runs' own ratios."""
    report = run.main(["--quick", "--repeats", "1", "--runs", "2", "--workloads", "xor", "--no-torch",
                       "--output", str(tmp_path)])
    runs = [*report["earlier_runs"], report["results"]]
    seen = [results[0]["ratios"]["ours/floor"] for results in runs]
    assert report["spread"]["xor"]["ours/floor"] == [min(seen), max(seen)]
    assert report["spread"]["xor"]["ours/pytorch"] is None  # PyTorch did not run
    text = (tmp_path / "cpu-quick.md").read_text()
    assert "Spread over 2 runs" in text and f"| {min(seen):.2f}-{max(seen):.2f} | - | - |" in text


def test_operation_counts_of_a_784_256_256_10_step(torch):
    """The convolution-free MNIST-sized step: ours counted on the recording backend, one per array operation
    (the pinned per-operation breakdown lives in test_device_discipline); PyTorch's as the performance issue counted
    them on a CuPy stand-in: 21 operations with SGD, 28 with its multi-tensor Adam."""
    from benchmarks.opcount import operations

    counted = operations(QUICK_WORKLOADS["mnist"], with_torch=True)
    assert counted["pytorch_sgd"] == 21 and counted["pytorch_adam"] == 28
    # ours: 3 layers x (forward product + bias, backward products and bias sum) and 2 ReLUs, the loss, and one
    # update of all 6 parameters over flat buffers (backprop.optim.flat): SGD's rule is 2 operations, Adam's 13
    assert (counted["ours_sgd"], counted["ours_adam"]) == (43, 54)


def test_quick_convolution_suite_reports_every_workload(tmp_path):
    from benchmarks import conv

    conv.main(["--quick", "--repeats", "1", "--output", str(tmp_path)])
    written = json.loads((tmp_path / "conv-cpu-quick.json").read_text())
    assert [result["workload"] for result in written["results"]] == list(conv.QUICK_WORKLOADS)
    expected = {"ours"} | ({"pytorch", "ours_torch"} if run.torch_available() else set())
    for result in written["results"]:
        assert set(result["candidates"]) == expected
        assert all(math.isfinite(c["fastest_s"]) and c["fastest_s"] > 0 for c in result["candidates"].values())
    assert "| digits CNN, one training step, batch 32 |" in (tmp_path / "conv-cpu-quick.md").read_text()


@pytest.mark.parametrize("name", ["digits", "mnist", "cifar"])
def test_the_convolution_benchmark_compares_the_same_network(torch, name):
    """PyTorch's candidate holds our initial weights: both compute the same outputs."""
    from benchmarks import conv

    workload = conv.QUICK_WORKLOADS[name]
    ours = conv.build(workload, "cpu")
    x, _ = conv.host_data(workload)
    theirs = conv.torch_model(ours).eval()
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(bp.to_numpy(ours.predict(x)), expected, rtol=1e-4, atol=1e-5)


def test_every_round_times_the_candidates_in_a_shuffled_order(monkeypatch):
    calls = []
    monkeypatch.setattr(run, "peak_memory", lambda step, library, on: (None, "skipped"))
    built = {name: ((lambda name=name: calls.append(name)), "numpy", "cpu") for name in "abcd"}
    run.time_candidates(built, rounds=12, round_seconds=1e-9)
    rounds = [tuple(calls[-48:][4 * i:4 * i + 4]) for i in range(12)]
    assert all(sorted(order) == list("abcd") for order in rounds)
    assert len(set(rounds)) > 4  # not one fixed order, nor a rotation of four
    firsts = {order[0] for order in rounds}
    assert len(firsts) >= 3


# -- fast paths against their references ---------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 5), (700, 600)])  # below and above the NumPy chunk (262,144 elements)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_subtract_scaled_equals_reference(backend, shape, dtype):
    fast, reference = bp.get_backend(backend), reference_backend(backend)
    if not fast.supports(dtype):
        pytest.skip(f"{backend} has no {dtype}")
    rng = np.random.default_rng(0)
    target_host, update_host = rng.standard_normal(shape), rng.standard_normal(shape)
    results = []
    for chosen in (fast, reference):
        with chosen.activate():
            target = chosen.to_device(target_host, chosen.dtype(dtype))
            update = chosen.to_device(update_host, chosen.dtype(dtype))
            results.append(chosen.to_numpy(chosen.subtract_scaled(target, 0.37, update)))
    tolerance = 1e-6 if dtype == "float32" else 1e-14  # torch's fused sub_ may round once instead of twice
    np.testing.assert_allclose(results[0], results[1], rtol=tolerance, atol=tolerance)
    expected = target_host - 0.37 * update_host
    np.testing.assert_allclose(results[0], expected, rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-6)


def test_numpy_subtract_scaled_is_bitwise_the_reference_even_for_a_transposed_update():
    rng = np.random.default_rng(1)
    target = rng.standard_normal((400, 300)).astype(np.float32)
    update = rng.standard_normal((300, 400)).astype(np.float32)
    expected = target - np.float32(0.1) * update.T
    for update_view in (update.T, np.ascontiguousarray(update.T)):
        result = bp.get_backend("cpu").subtract_scaled(target.copy(), 0.1, update_view)
        np.testing.assert_array_equal(result, expected)


def test_matmul_into_spare_equals_reference(backend):
    fast, reference = bp.get_backend(backend), reference_backend(backend)
    rng = np.random.default_rng(2)
    left_host, right_host = rng.standard_normal((16, 7)), rng.standard_normal((16, 5))
    results = []
    for chosen in (fast, reference):
        with chosen.activate():
            dtype = chosen.dtype("float32")
            left, right = chosen.to_device(left_host, dtype), chosen.to_device(right_host, dtype)
            spare = chosen.to_device(np.full((7, 5), np.nan), dtype)
            results.append(chosen.to_numpy(chosen.matmul(left.T, right, out=spare)))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6)
    np.testing.assert_allclose(results[0], left_host.T @ right_host, rtol=1e-5, atol=1e-5)


def test_training_reuses_gradient_buffers_and_matches_the_reference_backend(backend):
    """Four SGD steps with the fast paths give the reference's weights, and the weight gradient is written into
    the same array every step once the first one exists (no parameter-sized allocation per step): from the third
    on, after the second step moved it into the optimiser's flat gradient buffer (`backprop.optim.flat`)."""
    fast_model = _trained(bp.get_backend(backend))
    reference_model = _trained(reference_backend(backend))
    for (name, fast), (_, slow) in zip(fast_model[0].named_parameters(), reference_model[0].named_parameters()):
        np.testing.assert_allclose(bp.to_numpy(fast.value), bp.to_numpy(slow.value), rtol=1e-5, atol=1e-6, err_msg=name)
    if bp.get_backend(backend).writes_matmul_into_out:
        assert fast_model[1][1:] == [True, True]


def _trained(backend_value, steps: int = 4):
    model = bp.Sequential(bp.Dense(6, 8), bp.ReLU(), bp.Dense(8, 3), device=backend_value, seed=0)
    loss = bp.losses.MeanSquaredError()
    optimizer = bp.optim.SGD(model.parameters(), lr=0.1)
    rng = np.random.default_rng(3)
    x = model.as_input(rng.standard_normal((10, 6)))
    y = model.backend.to_device(rng.standard_normal((10, 3)), model._dtype)
    reused = []
    previous = None
    for _ in range(steps):
        loss_and_backward(model, loss, x, y)
        optimizer.step()
        grad = model.layers[0].params["weight"].grad
        if previous is not None:
            reused.append(grad is previous)
        previous = grad
    return model, reused


def test_hot_path_returns_prepared_data_as_is():
    model = bp.Sequential(bp.Dense(3, 2), seed=0)
    x = model.as_input(np.ones((4, 3)))
    assert model.as_input(x) is x
    target = np.zeros((4, 2), dtype=np.float32)
    assert bp.losses.MeanSquaredError().prepare_target(target, model.backend, model._dtype, (4, 2)) is target
    one_hot = np.eye(2, dtype=np.float32)[[0, 1, 1, 0]]  # CrossEntropy rows must be probabilities (issue 13)
    assert bp.losses.CrossEntropy().prepare_target(one_hot, model.backend, model._dtype, (4, 2)) is one_hot
    with pytest.raises(bp.errors.ShapeError):
        model.as_input(np.ones((4, 5), dtype=np.float32))


# -- optimised losses and sigmoid against PyTorch ------------------------------------------------------------
@pytest.mark.parametrize("targets", ["indices", "probabilities"])
def test_cross_entropy_matches_torch(torch, targets):
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((6, 4)) * 5
    y = rng.integers(0, 4, 6) if targets == "indices" else rng.dirichlet(np.ones(4), 6)
    loss = bp.losses.CrossEntropy()
    backend = bp.get_backend("cpu")
    target = loss.prepare_target(y, backend, backend.dtype("float64"), (6, 4))
    value, grad = loss.value_and_grad(np.array(logits), target)
    z = torch.tensor(logits, requires_grad=True)
    reference = torch.nn.functional.cross_entropy(z, torch.tensor(y))
    reference.backward()
    assert float(value) == pytest.approx(reference.item(), rel=1e-12)
    np.testing.assert_allclose(grad, z.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_mse_and_sigmoid_match_torch(torch):
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.standard_normal(6) * 3, [-800.0, -40.0, 0.0, 40.0, 800.0]]).reshape(-1, 1)
    t = rng.standard_normal(x.shape)
    model = bp.Sequential(bp.Sigmoid(), dtype="float64")
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no overflow anywhere on the way
        output, backward = model.forward(x, training=True)
        value, grad = bp.losses.MeanSquaredError().value_and_grad(output, t)
        dx = backward(grad)
    xt = torch.tensor(x, requires_grad=True)
    reference = torch.nn.functional.mse_loss(torch.sigmoid(xt), torch.tensor(t))
    reference.backward()
    np.testing.assert_allclose(output, torch.sigmoid(torch.tensor(x)).numpy(), rtol=1e-15, atol=0)
    assert float(value) == pytest.approx(reference.item(), rel=1e-14)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-13, atol=1e-300)


# -- memory ---------------------------------------------------------------------------------------------------
def test_a_thousand_steps_do_not_grow_memory():
    """Warm-up past 1,024 steps: CPython 3.10 gives a function its inline cache for globals on the 1,024th call
    (``co_opcache``, allocated once and kept), which tracemalloc would otherwise count as growth during the run."""
    step = our_step(QUICK_WORKLOADS["small"], "cpu")
    for _ in range(1100):
        step()
    tracemalloc.start()
    try:
        for _ in range(20):
            step()
        settled = tracemalloc.get_traced_memory()[0]
        for _ in range(1000):
            step()
        grown = tracemalloc.get_traced_memory()[0] - settled
    finally:
        tracemalloc.stop()
    assert grown < 2048, f"memory grew by {grown} bytes over 1,000 steps"


def test_relu_matches_torch_including_zero_and_nan(backend, torch):
    x_host = np.array([[-2.0, -0.0, 0.0, 1e-30, 3.0, np.nan, -np.inf, np.inf]])
    g_host = np.arange(1.0, 9.0).reshape(1, -1)
    model = bp.Sequential(bp.ReLU(), device=backend, dtype="float32")
    output, backward = model.forward(x_host, training=True)
    dx = bp.to_numpy(backward(model.backend.to_device(g_host, model._dtype)))
    xt = torch.tensor(x_host, dtype=torch.float32, requires_grad=True)
    reference = torch.relu(xt)
    reference.backward(torch.tensor(g_host, dtype=torch.float32))
    np.testing.assert_array_equal(bp.to_numpy(output), reference.detach().numpy())
    finite = ~np.isnan(x_host)  # at a NaN input PyTorch passes g through and we give 0: neither is meaningful
    np.testing.assert_array_equal(dx[finite], xt.grad.numpy()[finite])
