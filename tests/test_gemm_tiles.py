"""The GEMM's menu of tiles (kernels/gemm_math.cuh, gemm_plan.GEMM_TILES): every tile of every math
and pass against the float64 reference, with partial tiles on both sides, groups, stride phases
and a split count that does not divide K; bitwise reruns; the one-kernel modules the launch layer
compiles; and the tile heuristic on real layers — every pass whose K side holds at least 4
channels per group on the GEMM, with a grid of at least one wave's worth of SMs or all the
parallelism the menu and split K can give the shape.
"""
import math

import numpy as np
import pytest

from cudeconv._geometry import make_geometry
from cudeconv.backends.device_descriptor import H100_SXM
from cudeconv.backends.gemm_plan import (GEMM_TILES, gemm_grid, gemm_splits, gemm_tile, gemm_time,
                                         split_limit)
from cudeconv.backends.kernel_backend import GEMM_MIN_K_CHANNELS, KernelBackend, gemm_math, module_options
from cudeconv import backends
from cudeconv.cases import SUITE

from conftest import to_backend, to_numpy
from test_gemm import MATHS, _arrays, _math_id, check_against_reference

PASSES = ("forward", "grad_input", "grad_weight")
# 2-d, stride 2 (four forward phases, one with fewer rows), groups 2: per group 6 input channels
# (K of the forward, M of grad_weight: narrower than every M tile) and 20 output channels (N of the
# forward: a partial column tile on every menu), 3×3 taps (grad_weight's N = 180: partial on 128
# and 64); M = N·positions = 2·(6·7) = 84 rows for grad_input, 2·(6·7) per forward phase.
GEOMETRY = make_geometry(2, (2, 12, 6, 7), (12, 20, 3, 3), (2, 2), (1, 1), (1, 0), 2, (1, 1))


def _run(impl, backend, arrays, pass_, precision, tile, splits):
    x, weight, bias, grad_output = (to_backend(a, backend) for a in arrays)
    if pass_ == "forward":
        return to_numpy(impl.forward(x, weight, bias, GEOMETRY, "gemm", precision, splits, tile))
    if pass_ == "grad_input":
        return to_numpy(impl.grad_input(grad_output, weight, GEOMETRY, "gemm", precision, splits, tile))
    return to_numpy(impl.grad_weight(grad_output, x, GEOMETRY, "gemm", precision, splits, tile))


def _menu_cases():
    for math_ in MATHS:
        math_name = gemm_math(*math_)
        for pass_ in PASSES:
            for tile in GEMM_TILES[math_name][pass_]:
                yield pytest.param(math_, pass_, tile, id=f"{_math_id(math_)}-{pass_}-{tile[0]}x{tile[1]}")


@pytest.mark.parametrize("math_, pass_, tile", list(_menu_cases()))
def test_every_tile_matches_the_reference(kernel_backend, poisoned, math_, pass_, tile):
    dtype, precision = math_
    impl = backends.get(kernel_backend)
    arrays = _arrays(GEOMETRY, dtype, seed=hash((pass_, tile)) % 2**32)
    # one split, and a split count that divides no pass's K slices evenly
    for splits in (1, 3):
        result = _run(impl, kernel_backend, arrays, pass_, precision, tile, splits)
        check_against_reference({pass_: result}, arrays, GEOMETRY, dtype, precision)
    again = _run(impl, kernel_backend, arrays, pass_, precision, tile, 3)
    assert np.array_equal(result, again, equal_nan=True), "a rerun differs"


def test_the_launch_layer_runs_the_tile_it_reports(monkeypatch):
    impl = KernelBackend("recording", np, None, lambda: "cpu")
    launched = []
    monkeypatch.setattr(impl, "_launch", lambda path, entry, grid, block, args: launched.append((path, entry)))
    x, weight, bias, grad_output = _arrays(GEOMETRY, np.float32, seed=1)
    impl.forward(x, weight, bias, GEOMETRY, "gemm", "fp32", 1, (128, 32))
    *packings, (path, entry) = launched
    assert sorted(entry for _, entry in packings) == ["deconv_gemm_pack_activation_f32", "deconv_gemm_pack_weight_f32"]
    assert entry == path.entry == "deconv_forward_gemm_f32_128x32"
    assert (path.tile, path.gemm_pass, path.math) == ((128, 32), "forward", "f32")
    assert "-DCUDECONV_GEMM_PASS=CUDECONV_PASS_FORWARD" in module_options("f32", True, "forward", (128, 32))
    assert "-DCUDECONV_GEMM_TILE=128032" in module_options("f32", True, "forward", (128, 32))
    assert not any("GEMM_PASS" in option for option in module_options("f32", False, "forward", (128, 32)))


@pytest.mark.parametrize("tile", [(32, 32), (128, 16), [128]])
def test_a_tile_off_the_menu_is_refused(tile):
    impl = KernelBackend("recording", np, None, lambda: "cpu")
    with pytest.raises(ValueError, match="tile must be one of"):
        impl.kernel_path(GEOMETRY, "forward", "gemm", np.float32, "fp32", tile=tile)


def _most_blocks(geom, pass_, math_name):
    """The most blocks any tile of the menu gives the pass, at the most splits it allows."""
    most = 0
    for tile in GEMM_TILES[math_name][pass_]:
        grid, _ = gemm_grid(geom, pass_, math_name, 1, tile)
        if grid is not None:
            most = max(most, math.prod(grid) * split_limit(geom, pass_, math_name, grid[2]))
    return most


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
@pytest.mark.parametrize("case", SUITE, ids=lambda case: case.name)
def test_real_layers_run_on_the_gemm_and_fill_the_gpu(case, precision):
    impl = KernelBackend("planning", np, None, lambda: "cpu", device=H100_SXM)
    geom = case.geometry()
    math_name = gemm_math(np.float32, precision)
    k_sides = {"forward": geom.in_channels_per_group, "grad_input": geom.out_channels_per_group,
               "grad_weight": geom.in_channels_per_group}
    for pass_ in PASSES:
        path = impl.kernel_path(geom, pass_, "auto", np.float32, precision)
        if k_sides[pass_] < GEMM_MIN_K_CHANNELS or geom.in_channels_per_group == 1:
            assert path.kind != "gemm", (pass_, path)  # direct, or the depthwise kernels (test_fill_gpu)
            continue
        assert path.kind == "gemm", (pass_, path)
        blocks = math.prod(path.grid)
        assert blocks >= min(H100_SXM.sm_count, _most_blocks(geom, pass_, math_name)), (pass_, path)
        # the heuristic's tile: the least estimated time among the tiles whose grids cover the SMs
        filling = {}
        for tile in GEMM_TILES[math_name][pass_]:
            splits = gemm_splits(geom, pass_, math_name, H100_SXM, tile)
            if math.prod(gemm_grid(geom, pass_, math_name, splits, tile)[0]) >= H100_SXM.sm_count:
                filling[tile] = gemm_time(geom, pass_, math_name, H100_SXM, tile, splits)
        if filling:
            assert filling.get(path.tile) == min(filling.values()), (pass_, path, filling)


def test_the_heuristic_picks_narrow_tiles_for_narrow_groups():
    # 8 channels per group (a grouped 3-d upsampler, batch 32): the forward's and grad_input's N is
    # narrow, so is grad_weight's M; a wide square layer keeps 128×128
    narrow = make_geometry(3, (32, 32, 8, 8, 8), (32, 8, 3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), 4, (1, 1, 1))
    wide = make_geometry(2, (16, 256, 32, 32), (256, 256, 4, 4), (2, 2), (1, 1), (0, 0), 1, (1, 1))
    for math_name in ("f32", "tf32", "f16"):
        assert gemm_tile(narrow, "forward", math_name, H100_SXM) == (128, 32)
        assert gemm_tile(narrow, "grad_input", math_name, H100_SXM) == (128, 32)
        assert gemm_tile(narrow, "grad_weight", math_name, H100_SXM) == (32, 128)
        for pass_ in PASSES:
            assert gemm_tile(wide, pass_, math_name, H100_SXM) == (128, 128)
    # too few rows for one block per SM on a wide tile: the tile with the most blocks
    few = make_geometry(2, (1, 64, 4, 4), (64, 64, 2, 2), (2, 2), (0, 0), (0, 0), 1, (1, 1))
    blocks = {tile: math.prod(gemm_grid(few, "grad_input", "f32", gemm_splits(few, "grad_input", "f32", H100_SXM, tile),
                                        tile)[0]) for tile in GEMM_TILES["f32"]["grad_input"]}
    assert max(blocks.values()) < H100_SXM.sm_count
    assert blocks[gemm_tile(few, "grad_input", "f32", H100_SXM)] == max(blocks.values())
