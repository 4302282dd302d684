"""Many devices: a one-axis device mesh and the shardings of the train step's arrays (JAX only).

The train step stays one jitted pure function; this module only says where its arrays live, and
XLA inserts the collectives (all-reduce of gradients, all-gather of sharded weights) itself.

- Data parallel: every batch array (B, T) is split along B over the mesh axis "data"; params and
  optimizer state are replicated.
- Sharded params (ZeRO-3 / FSDP style, `shard_params=True`): each matrix of the state (params and
  the optimizer's moments, which have the same shapes) is split along its larger axis that the
  device count divides; vectors and scalars stay replicated (they are small). XLA gathers a
  matrix where it is used and reduce-scatters its gradient.

Because the jitted step is the same global computation whatever the mesh, the loss is a mean over
all real tokens of the global batch, and dropout masks are drawn per element of the global array
(backends/prng.py), the trajectory does not depend on the device count (up to float32 summation
order). Many hosts: `initialize` starts jax.distributed; each process builds only its own rows of each
global batch and puts them on its devices (`put_batch`), and `to_host` gathers state to every process.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np

from .errors import UserInputError

if TYPE_CHECKING:
    from jax.sharding import Mesh

AXIS = "data"


class ParallelError(UserInputError):
    """Devices were asked for that this backend or machine cannot give."""


def _jax():
    import jax

    return jax


def initialize(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join a multi-process run (one process per host) before any other JAX call."""
    if not 0 <= process_id < num_processes:
        raise ParallelError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    jax = _jax()
    # CPU devices of different processes talk through gloo (GPUs and TPUs bring their own collectives).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def process_index() -> int:
    """This process's index (0 without jax.distributed, or on NumPy)."""
    jax = sys.modules.get("jax")  # not imported (NumPy backend): one process, and no need to start JAX
    return 0 if jax is None else jax.process_index()


def process_count() -> int:
    """How many processes train together (1 without jax.distributed, or on NumPy)."""
    jax = sys.modules.get("jax")
    return 1 if jax is None else jax.process_count()


def make_mesh(devices: int | str | Mesh | None, backend) -> Mesh | None:
    """A one-axis ("data") mesh from a device count, "all" (every device of every process), or a
    ready jax.sharding.Mesh; None for one device (the plain single-device step).

    Errors name what was asked and what there is: more than one device on the NumPy backend, more
    devices than exist."""
    if devices is None or (isinstance(devices, int) and not isinstance(devices, bool) and devices == 1):
        return None
    if backend.name != "jax":
        raise ParallelError(
            f"--devices {devices} needs the JAX backend (FT_BACKEND=jax); the NumPy backend runs on one device"
        )
    jax = backend.jax
    from jax.sharding import Mesh

    if isinstance(devices, Mesh):
        if devices.axis_names != (AXIS,):
            raise ParallelError(f"the mesh must have the one axis {AXIS!r}, got {devices.axis_names}")
        return devices
    available = jax.devices()
    if devices == "all":
        count = len(available)
    elif isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
        count = devices
    else:
        raise ParallelError(f"devices must be a positive integer or 'all', got {devices!r}")
    if count > len(available):
        raise ParallelError(
            f"{count} devices were asked for but JAX sees {len(available)} ({available[0].platform}); "
            "on CPU, simulate more with XLA_FLAGS=--xla_force_host_platform_device_count=N"
        )
    if count == 1:
        return None
    return Mesh(np.asarray(available[:count]), (AXIS,))


def device_count(mesh) -> int:
    return 1 if mesh is None else mesh.devices.size


def describe(mesh, shard_params: bool) -> str:
    """'' for one device, else e.g. '8 devices (params sharded); '."""
    if mesh is None:
        return ""
    return f"{device_count(mesh)} devices ({'params sharded' if shard_params else 'data parallel'}); "


def check_batch_size(batch_size: int, mesh) -> None:
    """The global batch is split evenly: batch_size must be a multiple of the device count."""
    n = device_count(mesh)
    if batch_size % n:
        raise ParallelError(
            f"batch_size {batch_size} does not split evenly over {n} devices; "
            f"use a multiple of {n} (the global batch is the same whatever the device count)"
        )


def leaf_spec(shape: tuple[int, ...], n: int, shard_params: bool):
    """The PartitionSpec of one state array of `shape` over n devices: a matrix is split along its
    larger axis that n divides (the first such one on a tie), anything else is replicated."""
    from jax.sharding import PartitionSpec as P

    if not shard_params or len(shape) < 2:
        return P()
    axes = sorted((a for a in range(len(shape)) if shape[a] % n == 0), key=lambda a: (-shape[a], a))
    if not axes:
        return P()  # nothing divides: replicated, still correct
    spec: list[str | None] = [None] * len(shape)
    spec[axes[0]] = AXIS
    return P(*spec)


def state_shardings(state, mesh, shard_params: bool):
    """A NamedSharding for every leaf of `state` (params, opt_state, step), same tree structure."""
    jax = _jax()
    n = device_count(mesh)
    return jax.tree_util.tree_map(
        lambda x: jax.sharding.NamedSharding(mesh, leaf_spec(tuple(np.shape(x)), n, shard_params)), state
    )


def replicated(mesh):
    jax = _jax()
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def place_replicated(tree, mesh):
    """`tree` (the run's key) whole on every device of the mesh."""
    return _jax().device_put(tree, replicated(mesh))


def batch_sharding(mesh):
    """Batch arrays (B, T): rows split over the mesh."""
    jax = _jax()
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def place_state(state: dict, mesh, shard_params: bool) -> dict:
    """`state` (host or device arrays, from one device or another count) laid out on `mesh`."""
    jax = _jax()
    shardings = state_shardings(state, mesh, shard_params)
    if jax.process_count() == 1:
        return jax.device_put(state, shardings)
    # Every process holds the same whole state (drawn from the same seed, or read from the same
    # checkpoint) on one of its own devices; each contributes the shards its devices own.
    host = jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), state)
    return jax.tree_util.tree_map(
        lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index: x[index]), host, shardings
    )


def put_batch(host_batch: dict, mesh) -> dict:
    """A batch as arrays split by rows over the mesh. With one process `host_batch` is the global
    batch; with many it is this process's own rows of it (data.process_batch: batch k is a function
    of (seed, k), and every process pads to the global batch's lengths), which
    jax.make_array_from_process_local_data joins into the global array."""
    jax = _jax()
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(host_batch, sharding)
    count = jax.process_count()

    def local(x):
        return jax.make_array_from_process_local_data(sharding, x, (x.shape[0] * count, *x.shape[1:]))

    return {name: local(np.asarray(x)) for name, x in host_batch.items()}


def to_host(tree):
    """NumPy copies of a (possibly sharded, possibly multi-process) tree, the same on every process."""
    jax = _jax()
    if jax.process_count() == 1:
        return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def jit_step(train_step, mesh, state, shard_params: bool):
    """`train_step(state, batch, key)` jitted with its shardings: state as `state_shardings`, batch
    rows split, key replicated; the state is donated as on one device."""
    jax = _jax()
    state_sh = state_shardings(state, mesh, shard_params)
    return jax.jit(
        train_step,
        in_shardings=(state_sh, batch_sharding(mesh), replicated(mesh)),
        out_shardings=(state_sh, replicated(mesh)),
        donate_argnums=(0,),
    )
