"""Test fixtures: every test that takes ``backend`` runs once per array library and device available here.

The list comes from the backend registry (each backend module's ``EXAMPLES`` and ``GPU_EXAMPLES``): numpy and
array_api_strict (default device and the fake ``device1``) always; torch on the CPU when PyTorch is installed;
the GPU ones (marker ``cuda``) only with a GPU, otherwise skipped with the reason.
"""

from __future__ import annotations

import importlib.util

import pytest

import backprop as bp

CPU_SPECS = bp.backends.known_specifiers(gpu=False)  # from the registry: each backend module's EXAMPLES
GPU_SPECS = bp.backends.known_specifiers(gpu=True)


def _reason_unavailable(spec: str) -> str | None:
    try:
        bp.get_backend(spec)
    except bp.errors.BackendUnavailableError as error:
        return str(error)
    return None


def _params():
    params = []
    for spec in CPU_SPECS:
        params.append(pytest.param(spec, id=spec))
    for spec in GPU_SPECS:
        params.append(pytest.param(spec, id=spec, marks=pytest.mark.cuda))
    return params


@pytest.fixture(params=_params())
def backend(request) -> str:
    """A device specifier whose backend works here (tests skip, with the reason, where it does not)."""
    spec = request.param
    reason = _reason_unavailable(spec)
    if reason is not None:
        pytest.skip(f"{spec} unavailable: {reason}")
    return spec


@pytest.fixture
def torch():
    """PyTorch as a reference implementation (skipped with the reason where it is not installed)."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("PyTorch is not installed: pip install torch==2.13.0 (CPU) to compare against it")
    import torch as torch_module

    return torch_module
