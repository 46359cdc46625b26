"""One rank of the data-parallel tests: ``mpiexec -n 2 python data_parallel_worker.py SCENARIO
--backend B --out DIR``, run by tests/test_distributed.py, which reads what each rank wrote to
DIR/rank{r}.npz (arrays) or DIR/rank{r}.json and compares the ranks with one another and with
:func:`train` in a single process on the full batch (the oracle).

Scenarios:

``train``
    STEPS SGD steps (momentum, Nesterov, weight decay) of four independent layers — float64,
    float32, float16 and bfloat16 parameters, so four dtypes in two gradient buckets — each
    regressing its own targets. Each rank starts from its own seed (rank 0's parameters must win) and takes its
    half of every batch. Writes each parameter before the broadcast, after it, and after every step.
``checkpoint``
    ``DataParallel.save``/``load`` of one layer, where only rank 0 may touch the file, and the load
    of a missing file, which must fail on every rank.
``errors``
    Bad arguments: the exception type and message of each, per rank.
``fail``
    Rank 1 raises in the middle of training while rank 0 waits in a collective: the job must end
    at once, with rank 1's traceback, instead of hanging.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import cudeconv
from cudeconv import distributed
from cudeconv._dtypes import BFLOAT16

STEPS = 6
BATCH = 4  # samples in the full batch: 2 per rank


def build_layers(backend, seed):
    """Four layers of different dtypes and dimensions that train side by side."""
    return [
        cudeconv.ConvTranspose2d(3, 4, 3, stride=2, padding=1, dtype="float64", backend=backend, seed=seed),
        cudeconv.ConvTranspose1d(2, 3, 4, stride=2, padding=1, dtype="float32", backend=backend, seed=seed + 1),
        cudeconv.ConvTranspose2d(2, 2, 2, stride=2, groups=2, dtype="float16", backend=backend, seed=seed + 2),
        cudeconv.ConvTranspose3d(1, 2, 2, stride=2, dtype="bfloat16", backend=backend, seed=seed + 3),
    ]


# Per layer: the (input, output) shape of one sample.
SAMPLE_SHAPES = (((3, 5, 5), (4, 9, 9)), ((2, 7), (3, 14)), ((2, 3, 3), (2, 6, 6)), ((1, 2, 2, 2), (2, 4, 4, 4)))


def parameters(layers):
    return [p for layer in layers for p in layer.parameters()]


def full_batch(step, layers, xp):
    """(inputs, targets) per layer for ``step``, the same on every rank: BATCH samples each."""
    rng = np.random.default_rng(1000 + step)
    return [
        tuple(xp.asarray(rng.standard_normal((BATCH, *shape)).astype(layer.dtype)) for shape in shapes)
        for layer, shapes in zip(layers, SAMPLE_SHAPES)
    ]


def train(layers, steps, xp, parallel=None, after_step=lambda step: None):
    """``steps`` SGD steps on the mean squared error of each layer's output over its batch (the
    whole batch, or this rank's shard of it with ``parallel``); ``after_step(step)`` after each,
    counting from 1."""
    optimizer = cudeconv.SGD(parameters(layers), lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        for layer, (x, target) in zip(layers, full_batch(step, layers, xp)):
            if parallel is not None:
                x, target = parallel.shard(x), parallel.shard(target)
            diff = layer(x) - target
            # d(mean of squares)/d(output), the mean over the shard; bfloat16 times a float is float32
            layer.backward((diff * (2 / diff.size)).astype(diff.dtype, copy=False))
        if parallel is not None:
            parallel.average_gradients()
        optimizer.step()
        after_step(step)


def to_numpy(array):
    return array.get() if hasattr(array, "get") else np.asarray(array)


def snapshot(tag, params):
    """``{"tag/i": parameter i as a NumPy copy}``; bfloat16 as float32, exactly (NumPy's files
    cannot hold bfloat16: it would read back as raw bytes)."""
    return {
        f"{tag}/{i}": to_numpy(p.data).astype(np.float32 if p.dtype == BFLOAT16 else p.dtype)
        for i, p in enumerate(params)
    }


def scenario_train(comm, backend, steps):
    layers = build_layers(backend, seed=100 * comm.rank)  # each rank its own start
    params = parameters(layers)
    snapshots = snapshot("before", params)
    parallel = distributed.DataParallel(params, comm)
    snapshots.update(snapshot("start", params))
    train(layers, steps, comm.xp, parallel, after_step=lambda step: snapshots.update(snapshot(f"step{step}", params)))
    return snapshots


def scenario_checkpoint(comm, backend, out):
    layer = cudeconv.ConvTranspose2d(3, 2, 3, stride=2, backend=backend, seed=comm.rank)
    parallel = distributed.DataParallel(layer, comm)
    saved = {name: to_numpy(a) for name, a in layer.state_dict().items()}
    if comm.rank != 0:
        def only_rank_0_touches_the_file(path):
            raise AssertionError(f"rank {comm.rank} touched the checkpoint {path}")
        layer.save = layer.load = only_rank_0_touches_the_file
    path = out / "checkpoint.npz"
    parallel.save(path)
    for p in layer.parameters():  # every rank changes its parameters its own way
        p.data[...] = comm.rank + 7
    parallel.load(path)
    result = {f"saved/{name}": array for name, array in saved.items()}
    result.update({f"loaded/{name}": to_numpy(a) for name, a in layer.state_dict().items()})
    try:
        parallel.load(out / "missing.npz")
    except Exception as exc:
        result["missing_load_error"] = np.array(f"{type(exc).__name__}: {exc}")
    return result


def scenario_errors(comm, backend):
    layer = cudeconv.ConvTranspose2d(2, 2, 3, backend=backend, seed=0)
    parallel = distributed.DataParallel(layer, comm)
    xp = comm.xp
    read_only = xp.zeros(3)
    read_only.flags.writeable = False  # NumPy's (the MPI communicator's) only: CuPy has no such flag
    attempts = {
        "comm_not_a_communicator": lambda: distributed.DataParallel(layer, "mpi"),
        "model_empty": lambda: distributed.DataParallel([], comm),
        "model_not_parameters": lambda: distributed.DataParallel([layer.weight, xp.zeros(3)], comm),
        "model_repeats_a_parameter": lambda: distributed.DataParallel([layer.weight, layer.weight], comm),
        "shard_uneven": lambda: parallel.shard(xp.zeros((3, 2))),
        "shard_scalar": lambda: parallel.shard(xp.float32(1)),
        "gradients_before_backward": parallel.average_gradients,
        "save_without_a_layer": lambda: distributed.DataParallel(layer.parameters(), comm).save("x"),
        "allreduce_float16": lambda: comm.allreduce_mean(xp.zeros(3, np.float16)),
        "allreduce_list": lambda: comm.allreduce_mean([1.0, 2.0]),
        "allreduce_strided": lambda: comm.allreduce_mean(xp.zeros(6)[::2]),
        "allreduce_read_only": lambda: comm.allreduce_mean(read_only),
        "broadcast_root_out_of_range": lambda: comm.broadcast(xp.zeros(3), root=comm.size),
        "broadcast_root_not_int": lambda: comm.broadcast(xp.zeros(3), root=0.0),
    }
    seen = {}
    for name, attempt in attempts.items():
        try:
            attempt()
            seen[name] = None
        except Exception as exc:
            seen[name] = [type(exc).__name__, str(exc)]
    return seen


def scenario_fail(comm, backend):
    layers = build_layers(backend, seed=0)
    parallel = distributed.DataParallel(parameters(layers), comm)

    def after_step(step):
        if comm.rank == 1 and step == 2:
            raise RuntimeError("deliberate failure on rank 1 after step 2")

    train(layers, STEPS, comm.xp, parallel, after_step)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=("train", "checkpoint", "errors", "fail"))
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    comm = distributed.communicator_for(args.backend)
    with comm.abort_on_error():
        if args.scenario == "train":
            np.savez(args.out / f"rank{comm.rank}.npz", **scenario_train(comm, args.backend, args.steps))
        elif args.scenario == "checkpoint":
            np.savez(args.out / f"rank{comm.rank}.npz", **scenario_checkpoint(comm, args.backend, args.out))
        elif args.scenario == "errors":
            (args.out / f"rank{comm.rank}.json").write_text(json.dumps(scenario_errors(comm, args.backend)))
        else:
            scenario_fail(comm, args.backend)


if __name__ == "__main__":
    main()
