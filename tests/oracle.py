"""Independent reference implementations (float64, plain Python loops) for the tests.

Nothing here imports cudeconv: these are the textbook definitions, written to be obviously correct,
not fast, and used only at small sizes. ``conv_transpose_ref_fast`` (one loop per kernel tap) is the
one exception meant for medium sizes; it is itself checked against the naive loops in the tests.

Transposed convolution as scatter-add: every input element x[n, ci, i] is multiplied by every kernel
tap w[ci, co_local, k] and added to the output at position ``o = i*stride - padding + k*dilation``
(per spatial dim), in output channel ``g*Cout_g + co_local`` where ``g`` is the group of ``ci``;
positions that fall outside the output (cropped by padding, or beyond the end) are dropped. The
output size per dim is ``(in-1)*stride - 2*padding + dilation*(k-1) + output_padding + 1``.
"""
import itertools

import numpy as np


def as_tuple(value, nd):
    """``value`` (an int or a sequence of nd ints) as a tuple of nd ints."""
    if np.ndim(value) == 0:
        return (int(value),) * nd
    value = tuple(int(v) for v in value)
    assert len(value) == nd, (value, nd)
    return value


def output_spatial(in_spatial, kernel, stride, padding, output_padding, dilation):
    nd = len(in_spatial)
    s, p, op, d = (as_tuple(v, nd) for v in (stride, padding, output_padding, dilation))
    return tuple(
        (in_spatial[j] - 1) * s[j] - 2 * p[j] + d[j] * (kernel[j] - 1) + op[j] + 1 for j in range(nd)
    )


def _geometry(x, w, stride, padding, output_padding, groups, dilation):
    nd = x.ndim - 2
    s, p, op, d = (as_tuple(v, nd) for v in (stride, padding, output_padding, dilation))
    n_batch, c_in = x.shape[:2]
    in_sp = x.shape[2:]
    assert w.shape[0] == c_in and c_in % groups == 0
    cout_g = w.shape[1]
    kernel = w.shape[2:]
    out_sp = output_spatial(in_sp, kernel, s, p, op, d)
    return nd, s, p, d, n_batch, c_in, c_in // groups, cout_g, kernel, in_sp, out_sp


def _taps(i, kernel, s, p, d, out_sp):
    """(k, o) for every kernel tap k whose output position o (from input position i) is in range."""
    for k in itertools.product(*(range(kk) for kk in kernel)):
        o = tuple(i[j] * s[j] - p[j] + k[j] * d[j] for j in range(len(i)))
        if all(0 <= o[j] < out_sp[j] for j in range(len(o))):
            yield k, o


def conv_transpose_ref(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Transposed convolution by scatter-add over every input element and kernel tap (float64)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    nd, s, p, d, n_batch, c_in, cin_g, cout_g, kernel, in_sp, out_sp = _geometry(
        x, w, stride, padding, output_padding, groups, dilation
    )
    y = np.zeros((n_batch, cout_g * groups) + out_sp, dtype=np.float64)
    for n in range(n_batch):
        for ci in range(c_in):
            g = ci // cin_g
            for i in itertools.product(*(range(m) for m in in_sp)):
                xv = x[(n, ci) + i]
                for k, o in _taps(i, kernel, s, p, d, out_sp):
                    for col in range(cout_g):
                        y[(n, g * cout_g + col) + o] += xv * w[(ci, col) + k]
    if b is not None:
        b = np.asarray(b, dtype=np.float64)
        for n in range(n_batch):
            for co in range(cout_g * groups):
                y[n, co] += b[co]
    return y


def conv_transpose_backward_ref(grad_output, x, w, stride=1, padding=0, output_padding=0, groups=1,
                                dilation=1, bias=True):
    """(grad_input, grad_weight, grad_bias) of the same scatter-add, the loops transposed (float64).

    grad_input[n, ci, i] gathers grad_output at every position that x[n, ci, i] was scattered to,
    weighted by the tap; grad_weight[ci, col, k] accumulates x * grad_output over every pair that
    the tap connected; grad_bias sums grad_output over batch and space. grad_bias is None when
    ``bias`` is false.
    """
    gy = np.asarray(grad_output, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    nd, s, p, d, n_batch, c_in, cin_g, cout_g, kernel, in_sp, out_sp = _geometry(
        x, w, stride, padding, output_padding, groups, dilation
    )
    assert gy.shape == (n_batch, cout_g * groups) + out_sp, (gy.shape, out_sp)
    gx = np.zeros(x.shape, dtype=np.float64)
    gw = np.zeros(w.shape, dtype=np.float64)
    for n in range(n_batch):
        for ci in range(c_in):
            g = ci // cin_g
            for i in itertools.product(*(range(m) for m in in_sp)):
                for k, o in _taps(i, kernel, s, p, d, out_sp):
                    for col in range(cout_g):
                        gyv = gy[(n, g * cout_g + col) + o]
                        gx[(n, ci) + i] += gyv * w[(ci, col) + k]
                        gw[(ci, col) + k] += x[(n, ci) + i] * gyv
    gb = None
    if bias:
        gb = np.zeros(cout_g * groups, dtype=np.float64)
        for n in range(n_batch):
            for co in range(cout_g * groups):
                for o in itertools.product(*(range(m) for m in out_sp)):
                    gb[co] += gy[(n, co) + o]
    return gx, gw, gb


def conv_transpose_ref_fast(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """The same scatter-add with one Python loop per kernel tap and group (for medium sizes)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    nd, s, p, d, n_batch, c_in, cin_g, cout_g, kernel, in_sp, out_sp = _geometry(
        x, w, stride, padding, output_padding, groups, dilation
    )
    y = np.zeros((n_batch, cout_g * groups) + out_sp, dtype=np.float64)
    for k in itertools.product(*(range(kk) for kk in kernel)):
        i_idx, o_idx = [], []
        for j in range(nd):
            i = np.arange(in_sp[j])
            o = i * s[j] - p[j] + k[j] * d[j]
            keep = (o >= 0) & (o < out_sp[j])
            i_idx.append(i[keep])
            o_idx.append(o[keep])
        if any(len(a) == 0 for a in i_idx):
            continue
        for g in range(groups):
            xs = x[(slice(None), slice(g * cin_g, (g + 1) * cin_g)) + np.ix_(*i_idx)]
            ws = w[(slice(g * cin_g, (g + 1) * cin_g), slice(None)) + k]  # (cin_g, cout_g)
            contrib = np.moveaxis(np.tensordot(xs, ws, axes=([1], [0])), -1, 1)
            y[(slice(None), slice(g * cout_g, (g + 1) * cout_g)) + np.ix_(*o_idx)] += contrib
    if b is not None:
        y += np.asarray(b, dtype=np.float64).reshape((1, -1) + (1,) * nd)
    return y


def sgd_ref(params, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
            maximize=False):
    """Plain-Python SGD (torch.optim.SGD's update) over a sequence of steps, in float64.

    ``params``: list of initial arrays. ``grads``: one list per step, with an array or None per
    parameter (None: the parameter is skipped that step, and its momentum buffer is untouched).
    Returns the list of parameter lists after every step. Loops over elements one by one.
    """
    cur = [np.array(p, dtype=np.float64) for p in params]
    bufs = [None] * len(cur)
    history = []
    for step_grads in grads:
        new = []
        for idx, (p, g) in enumerate(zip(cur, step_grads)):
            if g is None:
                new.append(p.copy())
                continue
            g = np.asarray(g, dtype=np.float64)
            out = np.empty_like(p)
            buf_in = bufs[idx]
            buf_out = np.empty_like(p)
            for e in np.ndindex(p.shape):
                ge = float(g[e])
                if maximize:
                    ge = -ge
                if weight_decay != 0:
                    ge = ge + weight_decay * float(p[e])
                if momentum != 0:
                    if buf_in is None:
                        be = ge
                    else:
                        be = momentum * float(buf_in[e]) + (1 - dampening) * ge
                    buf_out[e] = be
                    if nesterov:
                        ge = ge + momentum * be
                    else:
                        ge = be
                out[e] = float(p[e]) - lr * ge
            if momentum != 0:
                bufs[idx] = buf_out
            new.append(out)
        cur = new
        history.append([p.copy() for p in cur])
    return history


def conv_transpose_backward_ref_fast(grad_output, x, w, stride=1, padding=0, output_padding=0,
                                     groups=1, dilation=1, bias=True):
    """``conv_transpose_backward_ref`` with one Python loop per kernel tap and group."""
    gy = np.asarray(grad_output, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    nd, s, p, d, n_batch, c_in, cin_g, cout_g, kernel, in_sp, out_sp = _geometry(
        x, w, stride, padding, output_padding, groups, dilation
    )
    assert gy.shape == (n_batch, cout_g * groups) + out_sp, (gy.shape, out_sp)
    gx = np.zeros(x.shape, dtype=np.float64)
    gw = np.zeros(w.shape, dtype=np.float64)
    sp_axes = list(range(2, 2 + nd))
    for k in itertools.product(*(range(kk) for kk in kernel)):
        i_idx, o_idx = [], []
        for j in range(nd):
            i = np.arange(in_sp[j])
            o = i * s[j] - p[j] + k[j] * d[j]
            keep = (o >= 0) & (o < out_sp[j])
            i_idx.append(i[keep])
            o_idx.append(o[keep])
        if any(len(a) == 0 for a in i_idx):
            continue
        for g in range(groups):
            ci = slice(g * cin_g, (g + 1) * cin_g)
            co = slice(g * cout_g, (g + 1) * cout_g)
            gys = gy[(slice(None), co) + np.ix_(*o_idx)]  # (N, cout_g, *sub)
            xs = x[(slice(None), ci) + np.ix_(*i_idx)]  # (N, cin_g, *sub)
            ws = w[(ci, slice(None)) + k]  # (cin_g, cout_g)
            gx[(slice(None), ci) + np.ix_(*i_idx)] += np.moveaxis(
                np.tensordot(gys, ws, axes=([1], [1])), -1, 1)
            gw[(ci, slice(None)) + k] += np.tensordot(xs, gys, axes=([0] + sp_axes, [0] + sp_axes))
    gb = gy.sum(axis=tuple([0] + sp_axes)) if bias else None
    return gx, gw, gb
