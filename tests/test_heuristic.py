"""algorithm="auto" pinned at its boundaries: the implicit GEMM needs at least 4 channels per group
on its K side (forward: C_in/groups; grad_input: C_out/groups; grad_weight: its M side,
C_in/groups, as its K is N·positions), whatever the other side — narrow N sides take the narrow
tiles; one channel fewer on the K side takes the direct kernel, one input channel per group the
depthwise kernel. Asked of
``KernelBackend.kernel_path``, the one decision the launches follow, on layers with two groups."""
import numpy as np
import pytest

from cudeconv import backends
from cudeconv._geometry import make_geometry

from conftest import skip_unless_kernel_checks_can_run

GROUPS = 2


@pytest.fixture(scope="module")
def emulator():
    skip_unless_kernel_checks_can_run("backend 'emulator'", backends.emulator_unavailable_reason())
    return backends.get("emulator")


def _geometry(in_per_group, out_per_group, kernel_size=(3, 3)):
    """A 2-d layer with GROUPS groups of the given channels: x (2, C_in, 6, 5), stride 2, padding 1."""
    return make_geometry(2, (2, GROUPS * in_per_group, 6, 5), (GROUPS * in_per_group, out_per_group) + kernel_size,
                         2, 1, 0, GROUPS, 1)


# (pass, C_in/groups, C_out/groups, kernel_size, expected kind)
BOUNDARIES = [
    # forward: C_in/groups is the GEMM's K; any C_out/groups (N), down to 1
    ("forward", 3, 16, (3, 3), "direct"),
    ("forward", 4, 16, (3, 3), "gemm"),
    ("forward", 4, 15, (3, 3), "gemm"),
    ("forward", 4, 1, (3, 3), "gemm"),
    # grad_input: the sides swap
    ("grad_input", 16, 3, (3, 3), "direct"),
    ("grad_input", 16, 4, (3, 3), "gemm"),
    ("grad_input", 2, 4, (3, 3), "gemm"),
    ("grad_input", 1, 4, (3, 3), "depthwise"),  # one input channel per group: the depthwise kernel
    # grad_weight: C_in/groups rows (at least 4), any C_out/groups·taps columns
    ("grad_weight", 3, 16, (1, 1), "direct"),
    ("grad_weight", 4, 16, (1, 1), "gemm"),
    ("grad_weight", 4, 1, (1, 1), "gemm"),
    ("grad_weight", 4, 5, (1, 3), "gemm"),
]


@pytest.mark.parametrize("pass_, in_per_group, out_per_group, kernel_size, kind", BOUNDARIES,
                         ids=[f"{p}-{i}in-{o}out-k{'x'.join(map(str, k))}-{kind}" for p, i, o, k, kind in BOUNDARIES])
def test_auto_switches_to_the_gemm_at_4_channels_on_the_k_side(emulator, pass_, in_per_group, out_per_group,
                                                               kernel_size, kind):
    geom = _geometry(in_per_group, out_per_group, kernel_size)
    path = emulator.kernel_path(geom, pass_, "auto", np.float32, "fp32")
    assert path.kind == kind, path
    if kind == "gemm":
        assert path.entry == f"deconv_{pass_}_gemm_f32_{path.tile[0]}x{path.tile[1]}"
    # the GEMM can run every one of these: "direct" above is the heuristic's choice, not a refusal
    assert emulator.kernel_path(geom, pass_, "gemm", np.float32, "fp32").kind == "gemm"
