"""SGD with momentum, exactly ``torch.optim.SGD``'s update, run on the parameters' backend.

For each parameter ``p`` whose ``grad`` is not None (others are skipped)::

    g = -grad if maximize else grad
    if weight_decay != 0:  g = g + weight_decay * p
    if momentum != 0:
        buf = g                                        (first step: a copy of g)
        buf = momentum * buf + (1 - dampening) * g     (later steps)
        g = g + momentum * buf if nesterov else buf
    p = p - lr * g

float16 and bfloat16 parameters are updated with float32 math and keep a float32 momentum buffer. On the "cuda"
and "emulator" backends each parameter's update is one fused kernel launch.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from . import backends
from ._geometry import is_int
from ._interop import as_backend_array
from .layers import Parameter, check_state_array

_HYPERPARAMETERS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")
# Options a torch.optim.SGD state_dict's groups carry that change only how PyTorch runs the same
# update (its loop or kernel; "initial_lr" is where PyTorch's LR schedulers restart from, and
# cudeconv has none): accepted and ignored. "differentiable" is taken only when False, as
# cudeconv's steps record no autograd graph.
_TORCH_IMPLEMENTATION_OPTIONS = ("foreach", "fused", "initial_lr")
_TORCH_GROUP_KEYS = frozenset(("params", *_HYPERPARAMETERS, *_TORCH_IMPLEMENTATION_OPTIONS, "differentiable"))


@dataclass(frozen=True)
class SGDHyperparameters:
    lr: float
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool
    maximize: bool


def _check_hyperparameters(group) -> SGDHyperparameters:
    for name in ("lr", "momentum", "dampening", "weight_decay"):
        value = group[name]
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise TypeError(f"{name} must be a real number, got {value!r}")
        if name != "dampening" and value < 0:
            raise ValueError(f"Invalid {name} value: {name}={value} must be non-negative")
    for name in ("nesterov", "maximize"):
        if not isinstance(group[name], (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {group[name]!r}")
    if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
        raise ValueError(
            f"Nesterov momentum requires a momentum and zero dampening, got "
            f"momentum={group['momentum']}, dampening={group['dampening']}"
        )
    return SGDHyperparameters(
        lr=float(group["lr"]), momentum=float(group["momentum"]),
        dampening=float(group["dampening"]), weight_decay=float(group["weight_decay"]),
        nesterov=bool(group["nesterov"]), maximize=bool(group["maximize"]),
    )


class SGD:
    """Stochastic gradient descent (optionally with momentum), ``torch.optim.SGD``'s formulas.

    ``params``: an iterable of :class:`Parameter`, or of dicts ``{"params": [...], "lr": ...}``
    (parameter groups overriding the defaults, as in PyTorch). ``backend=None`` uses the backend
    the parameters' arrays live on.
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False,
                 *, maximize=False, backend=None):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        _check_hyperparameters(defaults)
        if isinstance(params, (Parameter, dict)):
            raise TypeError(
                "params must be an iterable of Parameters or of parameter-group dicts, "
                f"got a single {type(params).__name__}"
            )
        params = list(params)
        if not params:
            raise ValueError("params is an empty list: SGD got no parameters to optimize")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        self.param_groups = []
        for group in params:
            unknown = set(group) - {"params", *_HYPERPARAMETERS}
            if unknown:
                raise ValueError(f"unknown parameter-group option(s) {sorted(unknown)}")
            members = group["params"]
            members = [members] if isinstance(members, Parameter) else list(members)
            for p in members:
                if not isinstance(p, Parameter):
                    raise TypeError(f"params must hold cudeconv.Parameter objects, got {type(p).__name__}")
            full = {**defaults, **{k: v for k, v in group.items() if k != "params"}, "params": members}
            _check_hyperparameters(full)
            self.param_groups.append(full)
        all_params = [p for g in self.param_groups for p in g["params"]]
        if len({id(p) for p in all_params}) != len(all_params):
            raise ValueError("some parameters appear more than once in params")
        self._impl = backends.resolve(
            backend, {f"params[{i}]": p.data for i, p in enumerate(all_params)}
        )
        self.backend = self._impl.name
        self.state = {}  # id(param) -> {"momentum_buffer": array}

    def _parameters(self):
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none=True):
        """Set every parameter's grad to None (PyTorch's default), or to zeros in place."""
        for p in self._parameters():
            p.zero_grad(set_to_none)

    def step(self):
        """Apply one update to every parameter that has a gradient."""
        for group in self.param_groups:
            hyper = _check_hyperparameters(group)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if tuple(p.grad.shape) != tuple(p.data.shape):
                    raise ValueError(
                        f"grad of shape {tuple(p.grad.shape)} does not match its parameter's "
                        f"shape {tuple(p.data.shape)}"
                    )
                self._impl.check_array(p.grad, "grad")
                if p.grad.dtype != p.data.dtype:
                    raise TypeError(
                        f"grad has dtype {p.grad.dtype} but its parameter has dtype {p.data.dtype}"
                    )
                state = self.state.setdefault(id(p), {})
                first_step = "momentum_buffer" not in state
                if hyper.momentum != 0 and first_step:
                    state["momentum_buffer"] = self._impl.momentum_buffer_for(p.data)
                self._impl.sgd_step(
                    p.data, p.grad, state.get("momentum_buffer"), hyper, first_step
                )

    def state_dict(self):
        """PyTorch's layout: ``{"state": {index: {"momentum_buffer": array}}, "param_groups": [...]}``
        with parameters numbered in order across groups; arrays are copies, on this optimizer's
        backend. ``torch.optim.SGD.load_state_dict`` takes it once each buffer is a tensor
        (``torch.from_numpy``, or ``torch.from_dlpack`` for a CuPy array)."""
        index = {id(p): i for i, p in enumerate(self._parameters())}
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append({**{k: group[k] for k in _HYPERPARAMETERS}, "params": list(range(start, start + n))})
            start += n
        state = {
            index[pid]: {"momentum_buffer": s["momentum_buffer"].copy()}
            for pid, s in self.state.items() if "momentum_buffer" in s and pid in index
        }
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyperparameters and momentum buffers from :meth:`state_dict`'s layout, which is
        PyTorch's: a ``torch.optim.SGD(...).state_dict()`` loads as it is. Momentum buffers may be
        NumPy or CuPy arrays or any array with ``__dlpack__`` (torch tensors), copied to this
        optimizer's backend; None (PyTorch's entry for no buffer yet) starts a fresh one at the
        next step with momentum. PyTorch's group options ``foreach``, ``fused`` and ``initial_lr``
        are ignored (they choose how PyTorch runs the same update); ``differentiable=True`` and
        any other option raise ValueError.

        All or nothing: the whole dict is checked and every buffer copied before anything
        changes, so a refused state_dict leaves the optimizer as it was.
        """
        groups, state = self._checked_state(state_dict)
        for mine, group in zip(self.param_groups, groups):
            mine.update(group)
        self.state = state

    def _checked_state(self, state_dict):
        """The new hyperparameters of each group and the new ``self.state`` that ``state_dict``
        describes; ValueError/TypeError naming what is wrong, before anything is changed."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        if set(state_dict) != {"state", "param_groups"}:
            raise ValueError(
                f"state_dict must have the keys ['param_groups', 'state'], got "
                f"{sorted(state_dict, key=repr)}"
            )
        saved_groups = state_dict["param_groups"]
        if not isinstance(saved_groups, (list, tuple)) or not all(
            isinstance(g, Mapping) for g in saved_groups
        ):
            raise TypeError("state_dict['param_groups'] must be a list of dicts")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(saved_groups)} parameter groups, this optimizer has "
                f"{len(self.param_groups)}"
            )
        # As in PyTorch, the saved groups' "params" name the parameters (the ids the "state" is
        # keyed by), and they map in order onto this optimizer's parameters.
        params_by_id, groups = {}, []
        for index, (saved, mine) in enumerate(zip(saved_groups, self.param_groups)):
            ids = saved.get("params")
            if not isinstance(ids, (list, tuple)) or not all(is_int(i) for i in ids):
                raise TypeError(
                    f"state_dict['param_groups'][{index}]['params'] must be a list of ints, got {ids!r}"
                )
            if len(ids) != len(mine["params"]):
                raise ValueError(
                    f"state_dict['param_groups'][{index}] has {len(ids)} parameters, this "
                    f"optimizer's group {index} has {len(mine['params'])}"
                )
            for i, p in zip(ids, mine["params"]):
                if int(i) in params_by_id:
                    raise ValueError(f"state_dict's param_groups name parameter {int(i)} twice")
                params_by_id[int(i)] = p
            _check_torch_options(saved, index)
            group = {**mine, **{k: saved[k] for k in _HYPERPARAMETERS if k in saved}}
            _check_hyperparameters(group)
            groups.append(group)
        saved_state = state_dict["state"]
        if not isinstance(saved_state, Mapping):
            raise TypeError(f"state_dict['state'] must be a dict, got {type(saved_state).__name__}")
        state = {}
        for key, entry in saved_state.items():
            if not is_int(key):
                raise TypeError(f"state_dict['state'] keys must be parameter ids (ints), got {key!r}")
            if int(key) not in params_by_id:
                raise ValueError(
                    f"state_dict['state'] has an entry for parameter {key!r}; its param_groups "
                    f"name the parameters {sorted(params_by_id)}"
                )
            if not isinstance(entry, Mapping) or not set(entry) <= {"momentum_buffer"}:
                raise ValueError(
                    f"state_dict['state'][{key!r}] must be a dict with at most the key "
                    f"'momentum_buffer', got {entry!r}"
                )
            what = f"state_dict['state'][{key!r}]['momentum_buffer']"
            buf = as_backend_array(entry.get("momentum_buffer"), what)
            if buf is None:  # as PyTorch: no buffer yet, the next step with momentum starts one
                continue
            p = params_by_id[int(key)]
            check_state_array(buf, what)
            if tuple(buf.shape) != tuple(p.data.shape):
                raise ValueError(
                    f"{what} has shape {tuple(buf.shape)}, its parameter has shape {tuple(p.data.shape)}"
                )
            mine = self._impl.momentum_buffer_for(p.data)
            mine[...] = self._impl.asarray(buf)
            state[id(p)] = {"momentum_buffer": mine}
        return groups, state


def _check_torch_options(saved_group, index):
    """ValueError for a saved group option this optimizer cannot honour: one SGD has no use for
    (another optimizer's, a misspelling) or ``differentiable=True``."""
    unknown = set(saved_group) - _TORCH_GROUP_KEYS
    if unknown:
        raise ValueError(
            f"state_dict['param_groups'][{index}] has option(s) {sorted(unknown, key=repr)} that SGD "
            f"does not have; it takes {sorted(_TORCH_GROUP_KEYS - {'params'})}"
        )
    if saved_group.get("differentiable", False):
        raise ValueError(
            f"state_dict['param_groups'][{index}] has differentiable="
            f"{saved_group['differentiable']!r}: cudeconv's SGD steps record no autograd graph, "
            f"so it loads only differentiable=False"
        )
