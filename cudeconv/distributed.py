"""Data-parallel training over several processes: gradients averaged by MPI (CPU) or NCCL (GPU).

Each process ("rank") holds a replica of the model and computes gradients on its shard of the
batch; :class:`DataParallel` makes the replicas start equal (rank 0's parameters are broadcast)
and averages the gradients after ``backward``, so :class:`cudeconv.SGD` then steps identically on
every rank. The communication is done by existing engines, behind one small interface:

- :class:`MPICommunicator`: mpi4py, NumPy arrays (backends "numpy" and "emulator");
  ``pip install 'cudeconv[mpi]'`` brings mpi4py and MPICH.
- :class:`NCCLCommunicator`: NCCL through ``cupyx.distributed``, CuPy arrays (backend "cuda"),
  on CuPy's current stream, without synchronizing with the host. MPI starts it (each rank's
  number and NCCL's id) and aborts it, so it needs mpi4py too.

Both run under ``mpiexec -n N``. A rank that raises inside :meth:`Communicator.abort_on_error`
aborts them all (``MPI_Abort``) instead of leaving the others waiting in a collective forever.
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
import traceback

import numpy as np

from . import backends
from ._geometry import is_int
from .layers import Parameter

# The dtypes the communicators sum: MPI and CuPy's NCCL bindings both add float32 and float64;
# narrower gradients (float16, bfloat16) are summed in float32, which neither loses precision nor
# needs a half-precision sum that MPI lacks.
_SUM_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def mpi_unavailable_reason():
    """None when mpi4py is installed, else why distributed training cannot start (a sentence).

    Only looks the package up: importing ``mpi4py.MPI`` would start MPI in this process."""
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed; pip install 'cudeconv[mpi]' (mpi4py and MPICH)"
    return None


def _mpi():
    """mpi4py's MPI module (importing it starts MPI in this process)."""
    reason = mpi_unavailable_reason()
    if reason is not None:
        raise ImportError(f"cudeconv.distributed needs MPI: {reason}")
    from mpi4py import MPI

    return MPI


def use_local_device():
    """Make this rank's GPU CuPy's current device and return its number (None without a GPU).

    A rank's GPU is its index among the ranks on its node, modulo the GPUs it sees: one GPU per
    rank when a node runs as many ranks as it has GPUs, or when ``CUDA_VISIBLE_DEVICES`` gives
    each rank its own (it then sees one, device 0). Collective: every rank must call it, before
    it puts anything on a GPU.
    """
    MPI = _mpi()
    # collective: before any early return, so that every rank takes part
    node = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED)
    local_rank = node.Get_rank()
    node.Free()
    try:
        import cupy
    except Exception:  # not installed, or a broken install (which raises all sorts): no GPU here
        return None
    if backends.cuda_device_unavailable_reason(cupy.cuda.runtime) is not None:
        return None
    device = local_rank % cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(device).use()
    return device


class Communicator:
    """What data-parallel training needs from a communication engine; one per process.

    ``rank`` (this process, 0 ≤ rank < size), ``size`` (the processes), ``xp`` (the array module
    of the arrays it takes), :meth:`allreduce_mean`, :meth:`broadcast`, :meth:`abort_on_error`.
    Every rank must make the same calls in the same order (they are collective).
    """

    xp = None
    array_kind = ""  # what arrays it takes, for messages

    def __init__(self, mpi_comm):
        self._mpi_comm = mpi_comm
        self.rank = mpi_comm.Get_rank()
        self.size = mpi_comm.Get_size()

    # -- the engine's part ----------------------------------------------------------------------
    def _holds(self, array) -> bool:
        raise NotImplementedError

    def _sum_to_root(self, array, root):
        """Sum ``array`` over the ranks into root's ``array``, in place."""
        raise NotImplementedError

    def _broadcast_bytes(self, data, root):
        """Copy root's ``data`` (a 1-d uint8 array) into every rank's, in place."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    def check_array(self, array, name):
        """TypeError/ValueError naming ``name`` unless ``array`` is a C-contiguous, writable
        array of the kind this communicator takes."""
        if not self._holds(array):
            raise TypeError(
                f"{name} must be a {self.array_kind} array for {type(self).__name__}, got "
                f"{type(array).__module__}.{type(array).__name__}"
            )
        if not array.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (it is updated in place)")
        if not getattr(array.flags, "writeable", True):  # CuPy arrays are always writable
            raise ValueError(f"{name} must be writable (it is updated in place)")

    def allreduce_mean(self, array):
        """Replace ``array`` (any shape, float32 or float64) by its mean over the ranks, in place.

        Every rank ends with bitwise the same values. An MPI or NCCL all-reduce does not promise
        that: the order of the additions is the algorithm's (which may add partial sums as they
        arrive, or group them differently on different ranks), and float addition is not
        associative. So, as the MPI standard advises where the order matters, the sum is made
        once, on rank 0, and rank 0's bits are broadcast; a reduce and a broadcast move about as
        many bytes as an all-reduce.
        """
        self.check_array(array, "array")
        if np.dtype(array.dtype) not in _SUM_DTYPES:
            raise TypeError(f"array must be float32 or float64, got dtype {array.dtype}")
        self._sum_to_root(array, 0)
        if self.rank == 0:
            array /= self.size
        self.broadcast(array, 0)

    def broadcast(self, array, root=0):
        """Copy rank ``root``'s ``array`` (any shape and dtype, the same on every rank) into every
        rank's ``array``, in place."""
        self.check_array(array, "array")
        if not is_int(root) or isinstance(root, bool):
            raise TypeError(f"root must be an int, got {root!r}")
        if not 0 <= root < self.size:
            raise ValueError(f"root must be a rank in [0, {self.size}), got root={root}")
        # as bytes, so that any dtype goes (bfloat16 included), and both engines copy it exactly
        self._broadcast_bytes(array.reshape(-1).view(np.uint8), int(root))

    @contextlib.contextmanager
    def abort_on_error(self):
        """Run the block; if it raises on this rank, print the traceback (prefixed with the rank)
        and abort every rank with MPI_Abort. Without it the other ranks would wait forever in a
        collective this rank never reaches."""
        try:
            yield
        except Exception:
            lines = traceback.format_exc().splitlines()
            print("\n".join(f"[rank {self.rank}] {line}" for line in lines), file=sys.stderr, flush=True)
            sys.stdout.flush()
            self._mpi_comm.Abort(1)

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class MPICommunicator(Communicator):
    """MPI through mpi4py, on NumPy arrays (backends "numpy" and "emulator").

    ``comm``: an ``mpi4py.MPI.Comm`` (default ``MPI.COMM_WORLD``: every process mpiexec started).
    """

    xp = np
    array_kind = "NumPy"

    def __init__(self, comm=None):
        MPI = _mpi()
        if comm is None:
            comm = MPI.COMM_WORLD
        if not isinstance(comm, MPI.Comm):
            raise TypeError(f"comm must be an mpi4py.MPI.Comm, got {type(comm).__name__}")
        super().__init__(comm)
        self._in_place = MPI.IN_PLACE
        self._sum = MPI.SUM

    def _holds(self, array):
        return isinstance(array, np.ndarray)

    def _sum_to_root(self, array, root):
        if self.rank == root:
            self._mpi_comm.Reduce(self._in_place, array, op=self._sum, root=root)
        else:
            self._mpi_comm.Reduce(array, None, op=self._sum, root=root)

    def _broadcast_bytes(self, data, root):
        self._mpi_comm.Bcast(data, root=root)


class NCCLCommunicator(Communicator):
    """NCCL through ``cupyx.distributed``, on CuPy arrays (backend "cuda"), one GPU per rank.

    Makes this rank's GPU current (:func:`use_local_device`), so it must be made before any array
    is put on a GPU. MPI (``MPI.COMM_WORLD``) starts NCCL — rank numbers and NCCL's unique id —
    and aborts the ranks on an error (also when NCCL's set-up fails on a rank, which would leave
    the others waiting in it); the arrays go through NCCL only, on CuPy's current stream, without
    waiting for the GPU.
    """

    array_kind = "CuPy"

    def __init__(self):
        MPI = _mpi()
        use_local_device()  # first: the checks below already make a CUDA context on the current GPU
        reason = backends.cuda_unavailable_reason()
        if reason is not None:
            raise backends.BackendUnavailableError(f"NCCLCommunicator cannot run here: {reason}")
        import cupy
        import cupyx.distributed
        from cupy.cuda import nccl

        if not nccl.available:
            raise backends.BackendUnavailableError(
                "NCCLCommunicator cannot run here: CuPy cannot load NCCL; install cudeconv[cuda12] "
                "or cudeconv[cuda13], which bring NVIDIA's NCCL wheel"
            )
        super().__init__(MPI.COMM_WORLD)
        self.xp = cupy
        # NCCL's set-up waits for every rank: one that fails to join would leave the others there
        with self.abort_on_error():
            self._nccl = cupyx.distributed.init_process_group(
                self.size, self.rank, backend="nccl", use_mpi=True
            )

    def _holds(self, array):
        return backends.infer_name(array) == "cuda"

    def _sum_to_root(self, array, root):
        self._nccl.reduce(array, array, root=root, op="sum")  # stream=None: CuPy's current stream

    def _broadcast_bytes(self, data, root):
        self._nccl.broadcast(data, root=root)


def communicator_for(backend: str) -> Communicator:
    """The communicator for a backend's arrays: NCCL for "cuda", MPI for "numpy" and "emulator"."""
    return NCCLCommunicator() if backends.check_name(backend) == "cuda" else MPICommunicator()


def _parameters_of(model):
    """``model``'s parameters: ``model.parameters()`` (a layer, a model) or ``model`` itself (an
    iterable of Parameter)."""
    params = model.parameters() if hasattr(model, "parameters") else model
    if isinstance(params, Parameter) or not hasattr(params, "__iter__"):
        raise TypeError(
            "model must be a layer (or anything with parameters()) or an iterable of "
            f"cudeconv.Parameter, got {type(model).__name__}"
        )
    params = list(params)
    if not params:
        raise ValueError("model has no parameters to train")
    for index, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(
                f"model's parameters must be cudeconv.Parameter objects, got {type(p).__name__} at "
                f"index {index}"
            )
    if len({id(p) for p in params}) != len(params):
        raise ValueError("some parameters appear more than once in model")
    return params


class DataParallel:
    """Data-parallel training of ``model`` across the ranks of ``comm``.

    ``model``: a layer (``ConvTranspose{1,2,3}d``), anything with ``parameters()``, or an iterable
    of :class:`cudeconv.Parameter`; ``comm``: a :class:`Communicator` whose arrays the parameters
    are (NumPy for MPI, CuPy for NCCL). Making it broadcasts rank 0's parameters to every rank.
    A step on every rank::

        x = parallel.shard(full_x)            # (N, ...) -> this rank's (N / size, ...)
        y = model(x); loss = mean over the shard
        model.backward(dloss/dy)              # accumulates the shard's gradients
        parallel.average_gradients()          # every grad := its mean over the ranks
        optimizer.step()                      # the same step on every rank

    With equal shards and a loss that is a mean over the shard, the averaged gradient is the
    gradient of the mean loss over the whole batch: the ranks train as one process would on the
    full batch. Uneven shards would weight their samples unequally, so :meth:`shard` refuses a
    batch the ranks cannot split evenly.
    """

    def __init__(self, model, comm):
        if not isinstance(comm, Communicator):
            raise TypeError(
                "comm must be a cudeconv.distributed.Communicator (MPICommunicator or "
                f"NCCLCommunicator), got {type(comm).__name__}"
            )
        self.parameters = _parameters_of(model)
        for index, p in enumerate(self.parameters):
            comm.check_array(p.data, f"model's parameter {index}")
        self.model = model
        self.comm = comm
        self.broadcast_parameters()

    def broadcast_parameters(self, root=0):
        """Copy rank ``root``'s parameters into every rank's."""
        for p in self.parameters:
            self.comm.broadcast(p.data, root)

    def shard(self, batch):
        """This rank's equal share of ``batch`` (N, ...): samples [rank·N/size, (rank+1)·N/size),
        a view. ValueError when size does not divide N (unequal shards would make the averaged
        gradient differ from the full batch's)."""
        shape = getattr(batch, "shape", None)
        if shape is None or len(shape) == 0:
            raise TypeError(f"batch must be an array of shape (N, ...), got {type(batch).__name__}")
        samples = shape[0]
        if samples % self.comm.size:
            raise ValueError(
                f"batch has {samples} samples, which {self.comm.size} ranks cannot split evenly; "
                f"use a batch size that is a multiple of {self.comm.size}"
            )
        per_rank = samples // self.comm.size
        return batch[self.comm.rank * per_rank:(self.comm.rank + 1) * per_rank]

    def average_gradients(self):
        """Replace every parameter's ``grad`` by its mean over the ranks, in place (the arrays are
        kept), bitwise the same on every rank.

        The gradients go as one flat bucket per dtype that is summed (float32 for float16,
        bfloat16 and float32 gradients, float64 for float64): one reduce and one broadcast per
        bucket, not per parameter. Every parameter must have a gradient on every rank.
        """
        buckets = {}
        for index, p in enumerate(self.parameters):
            if p.grad is None:
                raise RuntimeError(
                    f"model's parameter {index} (shape {tuple(p.shape)}) has no gradient: run "
                    f"backward on every rank before average_gradients()"
                )
            summed_as = np.dtype(np.float64) if p.grad.dtype == np.float64 else np.dtype(np.float32)
            buckets.setdefault(summed_as, []).append(p)
        xp = self.comm.xp
        for dtype, members in buckets.items():
            bucket = xp.concatenate([p.grad.reshape(-1) for p in members], dtype=dtype)
            self.comm.allreduce_mean(bucket)
            start = 0
            for p in members:
                p.grad[...] = bucket[start:start + p.grad.size].reshape(p.grad.shape)
                start += p.grad.size

    def share_autotune(self, root=0):
        """Make every rank run rank ``root``'s autotuned kernels from now on (:mod:`cudeconv.autotune`):
        its choices, from its cache and its tuning, are broadcast and each rank adopts them over its
        own. Collective; it waits for the GPU. Call it after the first step (which tunes) and after a
        step that meets new shapes: until then each rank tunes on its own and may run other kernels
        (the averaged gradients stay bitwise equal on every rank, since rank 0 sums them)."""
        from . import autotune

        xp = self.comm.xp
        payload = np.frombuffer(autotune.choices_to_share(), dtype=np.uint8) if self.comm.rank == root else None
        size = xp.asarray([0 if payload is None else payload.size], dtype=np.int64)
        self.comm.broadcast(size, root)
        data = xp.empty(int(size[0]), dtype=np.uint8) if payload is None else xp.asarray(payload.copy())
        self.comm.broadcast(data, root)
        if payload is None:
            autotune.adopt_choices(backends.get("numpy").asarray(data).tobytes())

    def _on_rank0(self, action, what):
        """Run ``action`` on rank 0 only; every rank returns when it has succeeded, or raises when
        it failed (rank 0 its own error), rather than waiting for a rank that gave up."""
        error = None
        if self.comm.rank == 0:
            try:
                action()
            except Exception as exc:  # re-raised below, once every rank knows
                error = exc
        failed = self.comm.xp.asarray([error is not None], dtype=np.uint8)
        self.comm.broadcast(failed, 0)
        if error is not None:
            raise error
        if bool(failed[0]):
            raise RuntimeError(f"rank 0 failed to {what} (its error is raised on rank 0)")

    def _checkpointing_model(self, method):
        if not callable(getattr(self.model, method, None)):
            raise TypeError(
                f"{method}() needs a model with {method}(path), such as a ConvTranspose layer; "
                f"this DataParallel wraps a {type(self.model).__name__}"
            )
        return self.model

    def save(self, path):
        """Write the model's checkpoint (``model.save(path)``) from rank 0 only; returns on every
        rank once it is written (all ranks' parameters are the same)."""
        model = self._checkpointing_model("save")
        self._on_rank0(lambda: model.save(path), f"save {str(path)!r}")

    def load(self, path):
        """Read the checkpoint on rank 0 only (``model.load(path)``), then broadcast it: the
        other ranks need not see the file."""
        model = self._checkpointing_model("load")
        self._on_rank0(lambda: model.load(path), f"load {str(path)!r}")
        self.broadcast_parameters()
