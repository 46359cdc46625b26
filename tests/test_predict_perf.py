"""scripts/predict_perf.py's traffic and time model, and scripts/ncu_traffic.py's reading of
Nsight Compute's CSV and its comparison with the emulator's profile.

The sampled launch (one block of the real grid, scaled by K slices and tiles) is checked against
the profile of the whole grid; the time model's terms against what they must do when one input
changes; the CSV reader on both of ncu's CSV layouts, written here by hand.
"""
import math
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import skip_unless_kernel_checks_can_run

from cudeconv import backends
from cudeconv._geometry import make_geometry
from cudeconv.backends.device_descriptor import H100_SXM
from cudeconv.backends.gemm_plan import packed_weight_elements

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import ncu_traffic  # noqa: E402
import predict_perf  # noqa: E402
import profile_gemm  # noqa: E402

# 4 × 32 × 8 × 8 in, 32 → 32 channels, k4 s2 p1: each stride phase has 4 × 64 = 256 rows, two
# 128-row tiles, so the forward and grad_input grids have several blocks alike; grad_weight's K
# (4 · 64 = 256 positions) is one split, grad_input's two (its grid is short of a wave). Small
# enough for a traced launch of the whole grid.
GEOM = make_geometry(2, (4, 32, 8, 8), (32, 32, 4, 4), (2, 2), (1, 1), (0, 0), 1, (1, 1))


def whole_grid_profile(pass_, dtype=np.float32, precision="fp32"):
    """The profile of the pass's GEMM launch over its whole grid (no sampling)."""
    backend = profile_gemm.SampledBackend(H100_SXM)
    path = backend.gemm_plan(GEOM, pass_, "auto", dtype, precision, device=H100_SXM)
    backend.box = path.grid
    x, w, y = (profile_gemm.aligned_zeros(getattr(GEOM, s), dtype) for s in ("input_shape", "weight_shape",
                                                                              "output_shape"))
    bias = profile_gemm.aligned_zeros(GEOM.out_channels, dtype)
    {"forward": lambda: backend.forward(x, w, bias, GEOM, "auto", precision),
     "grad_input": lambda: backend.grad_input(y, w, GEOM, "auto", precision),
     "grad_weight": lambda: backend.grad_weight(y, x, GEOM, "auto", precision)}[pass_]()
    (_, entry, _, profile), = backend.sampled
    return entry, profile


@pytest.mark.parametrize("pass_", ["forward", "grad_input"])
def test_one_sampled_block_scales_to_the_whole_grid(pass_):
    skip_unless_kernel_checks_can_run("the emulator", backends.emulator_unavailable_reason())
    sample = profile_gemm.sampled_pass(GEOM, pass_, np.float32, "fp32")
    assert profile_gemm.sample_box(GEOM, pass_) == (1, 1, 1)  # phase 0 has the most taps (all have 4)
    entry, whole = whole_grid_profile(pass_)
    assert sample["entry"] == entry and sample["parts"] == {"forward": 1, "grad_input": 2}[pass_]
    operands, shared = profile_gemm.scaled_traffic(sample)
    assert operands  # every operand of the launch was seen
    for name, counts in operands.items():
        position = next(p for p in whole["per_argument"] if profile_gemm.operand_name(entry, p) == name)
        kinds = profile_gemm.LOAD_KINDS if counts["kind"] == "load" else ("global_store",)
        requests, sectors, nbytes = profile_gemm.operand_counts(whole["per_argument"][position], kinds)
        # the grid's blocks are alike here: the same requests and bytes; sectors within the alignment
        assert counts["requests"] == requests and counts["bytes"] == nbytes, (name, counts, requests, nbytes)
        assert counts["sectors"] == pytest.approx(sectors, rel=0.05), (name, counts["sectors"], sectors)
    assert shared["bytes"] == sum(whole[k]["bytes"] for k in profile_gemm.SHARED_KINDS)


def test_the_forward_samples_up_to_the_first_phase_with_the_most_taps():
    # k3 s2 p1 d2: phases with an even offset per dim meet no tap; phase (1, 1) meets all 9
    geom = make_geometry(2, (1, 8, 4, 4), (8, 8, 3, 3), (2, 2), (1, 1), (1, 1), 1, (2, 2))
    assert [profile_gemm.phase_taps(geom, p) for p in np.ndindex(2, 2)] == [0, 0, 0, 9]
    assert profile_gemm.sample_box(geom, "forward") == (1, 1, 4)
    tiles, slices = profile_gemm.sampled_work(geom, "forward", "f32", splits=1)
    assert (tiles, slices) == (4, 9 * 1)  # four tiles write; 9 taps × one slice of 8 channels
    # the grid's work: per phase its tiles × taps × channel slices, as the executed multiply-adds count
    for tile in ((128, 128), (128, 32)):
        executed = predict_perf.executed_macs(geom, "forward", "f32", tile)
        assert executed == sum(t * s for t, s in profile_gemm.tile_work(geom, "forward", "f32", tile)) * tile[0] * tile[1] * 8
    # 4 × 4 outputs per phase, 8 channels: one tile per phase on either
    assert profile_gemm.tile_work(geom, "forward", "f32", (128, 32)) == profile_gemm.tile_work(geom, "forward", "f32")


def synthetic_sample(grid=(132, 1, 1), loads=1000, stores=100, shared_bytes=12800, slices=10):
    operands = {"a": dict(kind="load", per="slice", requests=100, sectors=loads, bytes=loads * 16, distinct=loads // 2),
                "c": dict(kind="store", per="tile", requests=10, sectors=stores, bytes=stores * 32, distinct=stores)}
    tiles = int(np.prod(grid))
    return dict(entry="deconv_forward_gemm_f32_128x128", grid=list(grid), parts=1, sampled=[1, slices],
                grid_work=[tiles, tiles * slices], operands=operands,
                shared=dict(requests=1, wavefronts=1, bytes=shared_bytes), mma={})


def terms(sample, sass=None, pass_="forward", math_name="f32"):
    sass = sass or {"loop": 700, "HMMA": 0}
    return predict_perf.gemm_terms(predict_perf.GPUS["h100"], H100_SXM, GEOM, pass_, math_name, (128, 128), sample,
                                   sass, 4)


def test_the_time_model_follows_its_inputs():
    base = terms(synthetic_sample())
    # issue: slices × warps × loop instructions ÷ schedulers ÷ efficiency, per block, one block per SM
    clock = predict_perf.GPUS["h100"]["clock_ghz"] * 1e9
    issue_cycles = 10 * predict_perf.WARPS * 700 / 4 / predict_perf.ISSUE_EFFICIENCY["forward"]
    assert base["pipes_ms"]["issue"] == pytest.approx(issue_cycles / clock * 1e3)
    assert base["bound"] == "SM (issue)"
    assert base["sm_ms"] == pytest.approx((issue_cycles + predict_perf.BLOCK_FILL_CYCLES) / clock * 1e3)
    # one block more than the SMs: the busiest SM runs two (wave quantization)
    assert terms(synthetic_sample(grid=(133, 1, 1)))["sm_ms"] == pytest.approx(2 * base["sm_ms"])
    # grad_weight's loop issues less efficiently than the forward's
    assert terms(synthetic_sample(), pass_="grad_weight")["pipes_ms"]["issue"] > base["pipes_ms"]["issue"]
    # L2: every sector, loads scaled by the grid's slices, stores by its tiles
    assert base["l2_mb"] == pytest.approx((1000 + 100) * 132 * 32 / 1e6)
    l2_bound = terms(synthetic_sample(loads=10**6))
    assert l2_bound["bound"] == "L2" and l2_bound["expected_ms"] == pytest.approx(l2_bound["l2_ms"])
    # tensor cores: a math with HMMA in its loop is charged its multiply-adds at the mma.sync rate
    tensor = terms(synthetic_sample(), {"loop": 10, "HMMA": 32}, math_name="tf32")
    assert tensor["pipes_ms"]["tensor"] > 0 and tensor["bound"] == "SM (tensor)"
    # waves from the descriptor's occupancy: 2 f32 GEMM blocks per SM
    assert base["resident"] == 2 and base["waves"] == pytest.approx(0.5)
    # packing: each packed operand read and written once at the DRAM rate, a launch floor each
    assert base["pack_ms"] == 0
    packed = predict_perf.gemm_terms(predict_perf.GPUS["h100"], H100_SXM, GEOM, "forward", "f32", (128, 128),
                                     synthetic_sample(), {"loop": 700, "HMMA": 0}, 4, ("weight",))
    rate = predict_perf.GPUS["h100"]["bandwidth"] * 1e12 * predict_perf.MEMORY_EFFICIENCY
    moved = (math.prod(GEOM.weight_shape) + packed_weight_elements(GEOM, "forward", "f32")) * 4
    assert packed["pack_ms"] == pytest.approx(max(moved / rate * 1e3, predict_perf.LAUNCH_FLOOR_MS))
    assert packed["expected_ms"] == pytest.approx(base["expected_ms"] + packed["pack_ms"])


DETAILS_CSV = '''==PROF== Connected to process 1234
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
"0","1234","python3","host","deconv_forward_gemm_f32_128x128","1","7","(256, 1, 1)","(1, 1, 4)","0","9.0","Command line profiler metrics","l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum","","2,048"
"0","1234","python3","host","deconv_forward_gemm_f32_128x128","1","7","(256, 1, 1)","(1, 1, 4)","0","9.0","Command line profiler metrics","l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum","sector","4,096"
"0","1234","python3","host","deconv_forward_gemm_f32_128x128","1","7","(256, 1, 1)","(1, 1, 4)","0","9.0","Command line profiler metrics","smsp__inst_executed_op_ldgsts.sum","inst","100"
"0","1234","python3","host","deconv_forward_gemm_f32_128x128","1","7","(256, 1, 1)","(1, 1, 4)","0","9.0","Command line profiler metrics","l1tex__t_sectors_pipe_lsu_mem_global_op_ldgsts_cache_access.sum","sector","300"
"0","1234","python3","host","deconv_forward_gemm_f32_128x128","1","7","(256, 1, 1)","(1, 1, 4)","0","9.0","Command line profiler metrics","l1tex__t_sectors_pipe_lsu_mem_global_op_ldgsts_cache_bypass.sum","sector","100"
"1","1234","python3","host","deconv_gemm_split_reduce_f32","1","7","(256, 1, 1)","(4, 1, 1)","0","9.0","Command line profiler metrics","l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum","","64"
'''
RAW_CSV = '''"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum","l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum","smsp__inst_executed_op_ldgsts.sum","l1tex__t_sectors_pipe_lsu_mem_global_op_ldgsts_cache_access.sum","l1tex__t_sectors_pipe_lsu_mem_global_op_ldgsts_cache_bypass.sum"
"","","","","","","","","sector","inst","sector","sector"
"0","1234","python3","host","deconv_forward_gemm_f32_128x128","1","7","2,048","4,096","100","300","100"
"1","1234","python3","host","deconv_gemm_split_reduce_f32","1","7","64","","","",""
'''


@pytest.mark.parametrize("text", [DETAILS_CSV, RAW_CSV], ids=["details", "raw"])
def test_ncu_csv_is_read_per_launch_in_order(text):
    launches = ncu_traffic.parse_ncu_csv(text)
    assert [name for name, _ in launches] == ["deconv_forward_gemm_f32_128x128", "deconv_gemm_split_reduce_f32"]
    metrics = launches[0][1]
    assert metrics["l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum"] == 2048  # thousands separator gone
    assert metrics["l1tex__t_sectors_pipe_lsu_mem_global_op_ldgsts_cache_bypass.sum"] == 100
    with pytest.raises(ValueError, match="not an Nsight Compute CSV"):
        ncu_traffic.parse_ncu_csv("kernel,metric\nx,1\n")


def test_the_comparison_gives_sectors_per_request_of_both_and_their_ratio():
    emulated = [("deconv_forward_gemm_f32_128x128", {"global_load": {"requests": 2048, "sectors": 8192},
                                             "cp_async": {"requests": 100, "sectors": 800},
                                             "shared_load": {"requests": 0, "wavefronts": 0}}),
                ("deconv_grad_input_gemm_f32_128x128", {"global_load": {"requests": 1, "sectors": 1}})]
    rows = ncu_traffic.compare(ncu_traffic.parse_ncu_csv(DETAILS_CSV), emulated)
    by = {(r["launch"], r["kind"]): r for r in rows}
    load = by[("deconv_forward_gemm_f32_128x128#0", "global_load")]
    assert (load["emulator_per_request"], load["ncu_per_request"], load["ratio"]) == (4.0, 2.0, 0.5)
    copy = by[("deconv_forward_gemm_f32_128x128#0", "cp_async")]  # both ldgsts sector metrics summed
    assert (copy["emulator_per_request"], copy["ncu_per_request"], copy["ratio"]) == (8.0, 4.0, 0.5)
    assert ("deconv_forward_gemm_f32_128x128#0", "shared_load") not in by  # no requests on either side
    assert by[("deconv_gemm_split_reduce_f32#0", "unmatched")]["side"] == "ncu"
    assert by[("deconv_grad_input_gemm_f32_128x128#0", "unmatched")]["side"] == "emulator"
    table = ncu_traffic.format_rows(rows)
    assert "| deconv_forward_gemm_f32_128x128#0 | global_load (sectors) | 2048 | 4.00 | 2048 | 2.00 | 0.50 |" in table


def test_the_csv_travels_in_the_cubin_archive(tmp_path):
    archive, csv_path = tmp_path / "cubins.tar.gz", tmp_path / "ncu.csv"
    (tmp_path / "a.cubin").write_bytes(b"\x7fELF cubin")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "a.cubin", arcname="a.cubin")
    with pytest.raises(ValueError, match="holds no ncu.csv"):
        ncu_traffic.read_csv_text(archive)
    csv_path.write_text(RAW_CSV)
    ncu_traffic.add_to_archive(archive, csv_path)
    ncu_traffic.add_to_archive(archive, csv_path)  # again: replaced, not doubled
    with tarfile.open(archive) as tar:
        assert sorted(m.name for m in tar.getmembers()) == ["a.cubin", "ncu.csv"]
        assert tar.extractfile("a.cubin").read() == b"\x7fELF cubin"
    assert ncu_traffic.read_csv_text(archive) == RAW_CSV
    assert ncu_traffic.read_csv_text(csv_path) == RAW_CSV


def test_every_compared_metric_is_recorded():
    for requests, units in ncu_traffic.COMPARED.values():
        assert set(requests) | set(units) <= set(ncu_traffic.METRICS)
    assert len(set(ncu_traffic.METRICS)) == len(ncu_traffic.METRICS)
