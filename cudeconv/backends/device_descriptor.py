"""What the launch layer knows of a GPU: a small frozen descriptor and the occupancy it implies.

The split counts of the kernels (path_choice.py) are a function of the problem's shape and of
this descriptor only — never of free memory or timing — so a given GPU model always splits a
given shape the same way and results are bitwise reproducible on it. On "cuda" the descriptor is
read from the arrays' device (``from_cuda_device``); the emulator describes an H100 SXM unless a
test or ``scripts/predict_perf.py`` passes another.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple, Tuple

# cudaDeviceAttr values (driver_types.h), read with cudaDeviceGetAttribute.
_ATTRIBUTES = {
    "compute_capability_major": 75,   # cudaDevAttrComputeCapabilityMajor
    "compute_capability_minor": 76,   # cudaDevAttrComputeCapabilityMinor
    "sm_count": 16,                   # cudaDevAttrMultiProcessorCount
    "shared_memory_per_block": 8,     # cudaDevAttrMaxSharedMemoryPerBlock
    "shared_memory_per_block_optin": 97,  # cudaDevAttrMaxSharedMemoryPerBlockOptin
    "shared_memory_per_sm": 81,       # cudaDevAttrMaxSharedMemoryPerMultiprocessor
    "reserved_shared_memory_per_block": 111,  # cudaDevAttrReservedSharedMemoryPerBlock
    "registers_per_sm": 82,           # cudaDevAttrMaxRegistersPerMultiprocessor
    "max_threads_per_sm": 39,         # cudaDevAttrMaxThreadsPerMultiProcessor
    "max_blocks_per_sm": 106,         # cudaDevAttrMaxBlocksPerMultiprocessor
}
REGISTER_ALLOCATION_UNIT = 256  # registers are given to a warp in units of 256 (sm_50 and later)
SHARED_ALLOCATION_UNIT = 128    # shared memory to a block in units of 128 bytes (sm_80 and later)
SHARED_ALLOCATION_UNIT_SM7X = 256  # and of 256 bytes on compute capability 7.x (V100, T4)
MAX_REGISTERS_PER_THREAD = 255


@dataclass(frozen=True)
class DeviceDescriptor:
    """The properties of a GPU that decide how many blocks of a kernel run at once."""

    name: str
    compute_capability: Tuple[int, int]
    sm_count: int
    shared_memory_per_block: int        # bytes a block may use without the opt-in (static limit)
    shared_memory_per_block_optin: int  # bytes with cudaFuncAttributeMaxDynamicSharedMemorySize
    shared_memory_per_sm: int
    reserved_shared_memory_per_block: int  # held by the runtime for each resident block
    registers_per_sm: int
    max_threads_per_sm: int
    max_blocks_per_sm: int

    def __post_init__(self):
        for field, value in self.__dict__.items():
            if field not in ("name", "compute_capability") and (
                    isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"DeviceDescriptor.{field} must be a non-negative int, got {value!r}")
        if self.sm_count < 1:
            raise ValueError(f"DeviceDescriptor.sm_count must be at least 1, got {self.sm_count!r}")

    @property
    def capability(self) -> int:
        """The compute capability as one number: 90 for 9.0."""
        return 10 * self.compute_capability[0] + self.compute_capability[1]


# H100 SXM5: 132 SMs, 228 KiB of shared memory per SM of which a block may take 227 KiB (opt-in),
# 1 KiB reserved per block, 64K registers, 2048 threads and 32 blocks per SM.
H100_SXM = DeviceDescriptor("H100 SXM", (9, 0), 132, 48 * 1024, 227 * 1024, 228 * 1024, 1024, 65536, 2048, 32)


def with_sm_count(device: DeviceDescriptor, sm_count: int, name: str = None) -> DeviceDescriptor:
    """``device`` with another SM count (a smaller part of the same architecture, say)."""
    return DeviceDescriptor(name or f"{device.name} with {sm_count} SMs", device.compute_capability, sm_count,
                            device.shared_memory_per_block, device.shared_memory_per_block_optin,
                            device.shared_memory_per_sm, device.reserved_shared_memory_per_block,
                            device.registers_per_sm, device.max_threads_per_sm, device.max_blocks_per_sm)


@functools.lru_cache(maxsize=None)
def from_cuda_device(device_id: int) -> DeviceDescriptor:
    """The descriptor of CUDA device ``device_id``, read once through CuPy's runtime bindings."""
    import cupy

    runtime = cupy.cuda.runtime
    values = {field: int(runtime.deviceGetAttribute(attribute, device_id)) for field, attribute in _ATTRIBUTES.items()}
    props = runtime.getDeviceProperties(device_id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return DeviceDescriptor(
        name, (values.pop("compute_capability_major"), values.pop("compute_capability_minor")), **values)


class KernelResources(NamedTuple):
    """What one block of a kernel holds on an SM: its threads, registers per thread and static
    shared memory in bytes."""
    threads: int
    registers_per_thread: int
    shared_bytes: int


def launch_bound_registers(device: DeviceDescriptor, threads: int, min_blocks: int) -> int:
    """The registers per thread ``__launch_bounds__(threads, min_blocks)`` lets the compiler use at
    most: the register file shared by ``min_blocks`` blocks, rounded down to the allocation unit."""
    per_thread = device.registers_per_sm // (threads * min_blocks)
    per_warp = per_thread * 32 // REGISTER_ALLOCATION_UNIT * REGISTER_ALLOCATION_UNIT
    return min(MAX_REGISTERS_PER_THREAD, per_warp // 32)


def resident_blocks(device: DeviceDescriptor, kernel: KernelResources) -> int:
    """Blocks of ``kernel`` one SM holds at once: the least of the thread, block, register and
    shared-memory limits (as CUDA's occupancy calculator counts them)."""
    warps = -(-kernel.threads // 32)
    registers_per_warp = -(-kernel.registers_per_thread * 32 // REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
    by_registers = device.registers_per_sm // (registers_per_warp * warps) if registers_per_warp else device.max_blocks_per_sm
    unit = SHARED_ALLOCATION_UNIT if device.capability >= 80 else SHARED_ALLOCATION_UNIT_SM7X
    shared = -(-(kernel.shared_bytes + device.reserved_shared_memory_per_block) // unit) * unit
    by_shared = device.shared_memory_per_sm // shared if shared else device.max_blocks_per_sm
    return max(1, min(device.max_blocks_per_sm, device.max_threads_per_sm // (32 * warps), by_registers, by_shared))


def wave(device: DeviceDescriptor, kernel: KernelResources) -> int:
    """Blocks of ``kernel`` the whole GPU runs at once."""
    return device.sm_count * resident_blocks(device, kernel)
