"""Which array namespace an array belongs to (the Array API's `__array_namespace__`)."""

from __future__ import annotations

from types import ModuleType
from typing import Any


def array_namespace(*arrays: Any) -> ModuleType:
    """The namespace (`numpy`, `jax.numpy`, `array_api_strict`, ...) of the first array given.

    Python scalars and None are skipped. Arrays from two different namespaces are an error,
    since mixing them would silently move data between devices or lose `jit` tracing.
    """
    found = None
    for a in arrays:
        if a is None or isinstance(a, (bool, int, float, complex)):
            continue
        ns = _namespace_of_one(a)
        if found is None:
            found = ns
        elif ns is not found:
            raise TypeError(
                f"arrays from two namespaces were mixed: {found.__name__} and {ns.__name__}; "
                "convert them to one backend first (Backend.asarray)"
            )
    if found is None:
        raise TypeError("no array was given to infer the array namespace from")
    return found


def _namespace_of_one(a: Any) -> ModuleType:
    get = getattr(a, "__array_namespace__", None)
    if get is not None:
        return get()
    module = type(a).__module__
    if module.startswith("jax"):  # tracers of older JAX releases lack __array_namespace__
        import jax.numpy as jnp

        return jnp
    if module == "numpy":  # NumPy scalars such as np.float32(1.0)
        import numpy as np

        return np
    raise TypeError(f"{type(a).__name__} is not an array of a known backend (no __array_namespace__)")
