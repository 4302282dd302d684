"""Shared fixtures. The suite runs on the backend that FT_BACKEND names (default numpy);
tests that compare against JAX skip themselves where JAX is not installed."""

import importlib.util
import os

import pytest

import backends

BACKEND_NAME = os.environ.get("FT_BACKEND", "numpy")
HAS_JAX = importlib.util.find_spec("jax") is not None

requires_jax = pytest.mark.skipif(not HAS_JAX, reason="JAX is not installed")


@pytest.fixture(scope="session")
def backend():
    """The backend FT_BACKEND names: every test runs on it."""
    return backends.get_backend(BACKEND_NAME)


@pytest.fixture(scope="session")
def xp(backend):
    return backend.xp


@pytest.fixture(scope="session")
def jax_backend():
    if not HAS_JAX:
        pytest.skip("JAX is not installed")
    return backends.get_backend("jax")


@pytest.fixture
def x64():
    """JAX's 64-bit types on for the test, as a user who works in float64 on JAX turns them on
    (the library turns them on only inside its own calls); nothing on NumPy."""
    if not HAS_JAX:
        yield
        return
    with backends.get_backend("jax").x64_scope():
        yield


@pytest.fixture(scope="session")
def numpy_backend():
    return backends.get_backend("numpy")
