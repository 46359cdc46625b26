// cudeconv emulator shim: lets CUDA C++ kernel source compile with the host C++ compiler and
// run on the CPU with CUDA's block/thread semantics.
//
// The Python side (cudeconv/emulator) builds one translation unit per module:
//     #include "cudeconv_emu.h"
//     <the kernel source, with `extern __shared__ T name[];` rewritten, see _compiler.py>
//     CUDECONV_EMU_EXPORT_KERNEL(name, max_threads)   // one per extern "C" __global__ entry point
//
// Execution model: the blocks of a grid are spread over OpenMP worker threads (one block at a
// time per worker). The threads of a block are fibers (user-space coroutines with their own
// stacks) on that worker's OS thread; a fiber runs until it finishes or reaches a barrier
// (__syncthreads, or a warp-synchronous intrinsic), then the scheduler resumes the next one in
// the launch's schedule (warp by warp, lanes ascending by default; see draw_schedule).
// Because all fibers of a block share one OS thread, `static thread_local` storage is exactly
// block-shared storage, which is how __shared__ is implemented: the module's thread-local
// storage holds the static __shared__ variables, the dynamic shared buffer and the worker
// pointer, and nothing else, so the scheduler poisons all of it at the start of each block.
//
// A watchdog thread stops a launch that runs past its time limit (see launch()).
#ifndef CUDECONV_EMU_H
#define CUDECONV_EMU_H

#define CUDECONV_EMULATOR 1

// Standard headers come before the CUDA keyword macros below: libstdc++ spells
// __attribute__((__noinline__)), which the __noinline__ macro would break.
#include <algorithm>
#include <atomic>
#include <cassert>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cxxabi.h>
#include <link.h>
#include <math.h>
#include <memory>
#include <mutex>
#include <pthread.h>
#include <stdint.h>
#include <string>
#include <sys/mman.h>
#include <thread>
#include <type_traits>
#include <typeinfo>
#include <ucontext.h>
#include <unistd.h>
#include <utility>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
// A traced build (racecheck=True / profile=True, see cudeconv_emu_trace.h) instruments the kernel's
// loads and stores; the scheduler's functions are CUDECONV_EMU_UNTRACED, and CUDECONV_EMU_TRACE_POINT
// passes what only the scheduler knows to the tracer.
#ifdef CUDECONV_EMU_TRACE
#include "cudeconv_emu_trace.h"
#define CUDECONV_EMU_UNTRACED __attribute__((no_sanitize_thread))
// Not inlined, so that the return address is the call site in kernel code.
#define CUDECONV_EMU_UNTRACED_CALL __attribute__((no_sanitize_thread, noinline))
#define CUDECONV_EMU_TRACE_POINT(worker, call) \
    do {                                         \
        if ((worker).trace->mode) call;         \
    } while (0)
#else
#define CUDECONV_EMU_UNTRACED
#define CUDECONV_EMU_UNTRACED_CALL
#define CUDECONV_EMU_TRACE_POINT(worker, call) \
    do {                                         \
    } while (0)
#endif
#if !defined(__x86_64__) || defined(CUDECONV_EMU_UCONTEXT)
#define CUDECONV_EMU_USE_UCONTEXT 1
#endif
// The watchdog can stop a thread stuck in kernel code only where it knows how to switch stacks
// from a signal handler: the x86-64 fiber switch, outside the sanitizers (a sanitized launch is
// a child process, which the watchdog ends instead).
#if !defined(CUDECONV_EMU_USE_UCONTEXT) && !defined(__SANITIZE_ADDRESS__)
#define CUDECONV_EMU_CAN_INTERRUPT 1
#endif

#if CUDECONV_EMU_HAVE_CUDA_HEADERS
// The toolkit's headers compile on the host; they are included here, before the CUDA keywords
// are redefined, so a later `#include <cuda_fp16.h>` in kernel code is a no-op.
#include <vector_types.h>
#include <vector_functions.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#else
// No CUDA toolkit headers: minimal vector types (no __half / __nv_bfloat16).
#define CUDECONV_EMU_VECTOR_TYPES(T, N)                                                          \
    struct N##1 { T x; };                                                                        \
    struct alignas(2 * sizeof(T) > 16 ? 16 : 2 * sizeof(T)) N##2 { T x, y; };                    \
    struct N##3 { T x, y, z; };                                                                  \
    struct alignas(4 * sizeof(T) > 16 ? 16 : 4 * sizeof(T)) N##4 { T x, y, z, w; };              \
    static inline N##1 make_##N##1(T x) { return N##1{x}; }                                      \
    static inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; }                              \
    static inline N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; }                      \
    static inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }
CUDECONV_EMU_VECTOR_TYPES(signed char, char)
CUDECONV_EMU_VECTOR_TYPES(unsigned char, uchar)
CUDECONV_EMU_VECTOR_TYPES(short, short)
CUDECONV_EMU_VECTOR_TYPES(unsigned short, ushort)
CUDECONV_EMU_VECTOR_TYPES(int, int)
CUDECONV_EMU_VECTOR_TYPES(unsigned int, uint)
CUDECONV_EMU_VECTOR_TYPES(long, long)
CUDECONV_EMU_VECTOR_TYPES(unsigned long, ulong)
CUDECONV_EMU_VECTOR_TYPES(long long, longlong)
CUDECONV_EMU_VECTOR_TYPES(unsigned long long, ulonglong)
CUDECONV_EMU_VECTOR_TYPES(float, float)
CUDECONV_EMU_VECTOR_TYPES(double, double)
#undef CUDECONV_EMU_VECTOR_TYPES
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};
#endif

// ---- CUDA keywords -------------------------------------------------------------------------
#undef __host__
#undef __device__
#undef __global__
#undef __shared__
#undef __constant__
#undef __managed__
#undef __forceinline__
#undef __noinline__
#undef __launch_bounds__
#undef __grid_constant__
#define __host__
#define __device__
#define __constant__
#define __managed__
#define __grid_constant__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#ifndef __align__
#define __align__(n) __attribute__((aligned(n)))
#endif
#ifdef CUDECONV_EMU_DISCOVER
// Entry-point discovery pass (preprocessing only): keep markers the Python side can find.
#define __global__ __cudeconv_emu_global__
#define __launch_bounds__(...) __cudeconv_emu_launch_bounds__(__VA_ARGS__)
#else
#define __global__
#define __launch_bounds__(...)
#endif
// One block at a time runs on each OS thread, so per-thread storage is per-block storage.
// (AddressSanitizer puts no redzones around thread-local variables: under sanitize=True only
// UBSan's bounds check on subscripts catches overflows of static __shared__ arrays.)
#define __shared__ static thread_local

static constexpr int warpSize = 32;

namespace cudeconv_emu {

constexpr unsigned kWarpSize = 32;
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr size_t kMaxDynamicShared = 232448;  // sm_90 opt-in maximum (227 KiB)
// Each fiber's stack region is this size and aligned to it (see current_fiber); a power of two.
#ifdef __SANITIZE_ADDRESS__
constexpr size_t kFiberStackRegion = 1u << 20;  // ASan redzones inflate stack frames
#else
constexpr size_t kFiberStackRegion = 256u << 10;
#endif

// Interrupted: stopped by the watchdog's signal, anywhere in kernel code.
enum class FiberState : unsigned char { Ready, AtBlockBarrier, AtWarpCollective, Exited, Aborted, Interrupted };

struct Fiber;
struct Worker;
// A warp collective that needs more than a 64-bit value per lane (mma.sync, ldmatrix): run by the
// scheduler once all 32 lanes have arrived, reading each lane's operands through warp_operands.
// Returns an empty string, or what was wrong (the launch then fails with it).
using WarpOperation = std::string (*)(Worker&, Fiber* const* lanes);

// One cp.async copy between its issue and the cp.async.wait_group that covers it.
struct PendingCopy {
    unsigned char* destination;
    unsigned size;   // cp-size: 4, 8 or 16
    unsigned group;  // index of the commit group it belongs to
    const void* pc;  // where it was issued (traced builds)
    unsigned char bytes[16];  // the source bytes read at issue, zero-filled past src-size
};

struct Fiber {
#ifdef CUDECONV_EMU_USE_UCONTEXT
    ucontext_t context;
#else
    void* stack_pointer;
#endif
    uint3 thread_idx;
    unsigned linear_idx;
    unsigned lane;
    FiberState state;
    int barrier_predicate;
    // warp-collective exchange: inputs set by the fiber, outputs by the scheduler
    unsigned warp_mask;
    int warp_source_lane;
    uint64_t warp_value;
    uint64_t warp_result;
    unsigned warp_ballot;
    unsigned warp_group;
    bool warp_fence;  // __syncwarp (orders memory), not a shuffle or vote
    WarpOperation warp_operation;  // null for shuffles, votes and __syncwarp
    const char* warp_operation_name;
    void* warp_operands;           // points into the fiber's own stack while it waits
    // cp.async copies not yet completed, in issue order, and the number of commit groups so far
    std::vector<PendingCopy> pending_copies;
    unsigned committed_copy_groups;
    unsigned char* stack;  // lowest usable byte; a guard page lies below
    size_t stack_size;
    void* asan_fake_stack;
};

// In the first page of each fiber's stack region, below its guard page.
struct StackHeader {
    Fiber* fiber;
    Worker* worker;
};

// The order in which the threads of a block run between two barriers (see run_block).
enum class Schedule : unsigned { Ascending = 0, Descending = 1, Random = 2 };

struct Launch {
    dim3 grid_dim, block_dim;
    size_t dynamic_shared_bytes;
    Schedule schedule;
    uint64_t schedule_seed;  // for Schedule::Random
    void (*invoke)(void**);
    void** params;
    std::atomic<bool> failed{false};
    std::mutex error_mutex;
    std::string error;
    // Set by the watchdog; each worker then stops its block and describes it. Separate from
    // `error`: a thread stopped inside fail() would leave error_mutex locked.
    std::atomic<bool> timed_out{false};
    std::mutex timeout_mutex;
    std::string timeout_report;
    std::vector<Worker*> workers;  // under timeout_mutex

    void fail(const std::string& message) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!failed.load()) {
            error = message;
            failed.store(true);
        }
    }
    bool stopping() const {
        return failed.load(std::memory_order_relaxed) || timed_out.load(std::memory_order_relaxed);
    }
};

struct Worker {
#ifdef CUDECONV_EMU_USE_UCONTEXT
    ucontext_t scheduler_context;
#else
    void* scheduler_stack_pointer;
#endif
    Launch* launch;
    dim3 grid_dim, block_dim;
    uint3 block_idx;
    unsigned num_threads;
    // The fiber resumed last, null between resumes; atomic because the watchdog reads it.
    std::atomic<Fiber*> running{nullptr};
    unsigned barrier_count;    // result of the last __syncthreads_count
    // Per warp: its lanes that had not exited when it last started running (after a barrier or a
    // warp collective), which __activemask reports whatever order the lanes then run in.
    unsigned active_lanes[kMaxThreadsPerBlock / kWarpSize];
    unsigned barrier_arrived;  // how many threads took part in it
    std::unique_ptr<Fiber[]> fibers;
    pthread_t os_thread;
    unsigned char* tls_begin;  // this thread's instance of the module's thread-local storage
    unsigned char* tls_end;
#ifdef CUDECONV_EMU_TRACE
    trace::WorkerTrace* trace;
#endif
    const void* asan_scheduler_stack_bottom;
    size_t asan_scheduler_stack_size;
    void* asan_scheduler_fake_stack;
};

// The worker of this OS thread; only the scheduler side uses it.
inline thread_local Worker* tls_worker = nullptr;

// Dynamic shared memory: every `extern __shared__ T name[];` is rewritten to a declaration of
// this symbol (see _compiler.py), so all of them alias it, as in CUDA, wherever they are declared.
alignas(128) thread_local unsigned char dynamic_shared[kMaxDynamicShared] __asm__("cudeconv_emu_dynamic_shared");

// The running kernel thread is found from the stack pointer: fiber stack regions are aligned
// to their size, and a header in the region's first page names the fiber. Every threadIdx /
// blockIdx access goes through here, and this is cheaper than a thread_local in a dlopen'ed
// module (a __tls_get_addr call; the initial-exec TLS model would move all of the module's
// thread_local __shared__ arrays into glibc's small static TLS reserve).
// The header's offset in the page depends on the region's address: at one fixed offset, the
// headers of a block's threads would all compete for the same cache set.
inline StackHeader& stack_header_of(uintptr_t region) {
    constexpr unsigned kRegionBits = __builtin_ctzll(kFiberStackRegion);
    return *reinterpret_cast<StackHeader*>(region + ((region >> kRegionBits) & 63u) * 64u);
}

inline StackHeader& current_stack_header() {
#ifdef __x86_64__
    uintptr_t sp;
    __asm__("movq %%rsp, %0" : "=r"(sp));  // not the address of a local: ASan may move locals to a fake stack
#else
    char probe;
    const uintptr_t sp = reinterpret_cast<uintptr_t>(&probe);
#endif
    return stack_header_of(sp & ~uintptr_t(kFiberStackRegion - 1));
}
inline Fiber& current_fiber() { return *current_stack_header().fiber; }
inline Worker& current_worker() { return *current_stack_header().worker; }

inline std::string format_uint3(uint3 v) {
    return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}

inline std::string pointer_text(const void* p) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%p", p);
    return buf;
}

inline std::string where_am_i() {
    return "block " + format_uint3(current_worker().block_idx) + ", thread " + format_uint3(current_fiber().thread_idx);
}

// ---- fiber switching -----------------------------------------------------------------------
#ifndef CUDECONV_EMU_USE_UCONTEXT
// Saves the callee-saved registers on the current stack, stores the stack pointer in *save,
// loads `target` as the stack pointer, restores the registers saved there and continues at the
// address saved with them.
extern "C" void cudeconv_emu_switch_stack(void** save, void* target);
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".hidden cudeconv_emu_switch_stack\n"
    ".globl cudeconv_emu_switch_stack\n"
    ".type cudeconv_emu_switch_stack,@function\n"
    "cudeconv_emu_switch_stack:\n"
    "    pushq %rbp\n"
    "    pushq %rbx\n"
    "    pushq %r12\n"
    "    pushq %r13\n"
    "    pushq %r14\n"
    "    pushq %r15\n"
    "    movq %rsp, (%rdi)\n"
    "    movq %rsi, %rsp\n"
    "    popq %r15\n"
    "    popq %r14\n"
    "    popq %r13\n"
    "    popq %r12\n"
    "    popq %rbx\n"
    "    popq %rbp\n"
    // pop + jmp rather than ret: the return-stack predictor would mispredict every switch
    "    popq %rax\n"
    "    jmp *%rax\n"
    ".hidden cudeconv_emu_switch_stack_end\n"
    ".globl cudeconv_emu_switch_stack_end\n"
    "cudeconv_emu_switch_stack_end:\n"
    ".size cudeconv_emu_switch_stack, .-cudeconv_emu_switch_stack\n");
#endif

CUDECONV_EMU_UNTRACED inline void resume_fiber(Worker& w, Fiber& f) {
    w.running.store(&f, std::memory_order_release);
#ifdef CUDECONV_EMU_TRACE
    w.trace->thread = static_cast<int>(f.linear_idx);
#endif
#ifdef __SANITIZE_ADDRESS__
    __sanitizer_start_switch_fiber(&w.asan_scheduler_fake_stack, f.stack, f.stack_size);
#endif
#ifdef CUDECONV_EMU_USE_UCONTEXT
    swapcontext(&w.scheduler_context, &f.context);
#else
    cudeconv_emu_switch_stack(&w.scheduler_stack_pointer, f.stack_pointer);
#endif
#ifdef __SANITIZE_ADDRESS__
    __sanitizer_finish_switch_fiber(w.asan_scheduler_fake_stack, nullptr, nullptr);
#endif
    w.running.store(nullptr, std::memory_order_relaxed);
#ifdef CUDECONV_EMU_TRACE
    w.trace->thread = -1;
#endif
}

// Called by a fiber after setting its state; returns when the scheduler resumes it.
inline void yield_to_scheduler() {
    Worker& w = current_worker();
    Fiber& f = current_fiber();
#ifdef __SANITIZE_ADDRESS__
    const bool finished = f.state == FiberState::Exited || f.state == FiberState::Aborted;
    __sanitizer_start_switch_fiber(finished ? nullptr : &f.asan_fake_stack, w.asan_scheduler_stack_bottom,
                                   w.asan_scheduler_stack_size);
#endif
#ifdef CUDECONV_EMU_USE_UCONTEXT
    swapcontext(&f.context, &w.scheduler_context);
#else
    cudeconv_emu_switch_stack(&f.stack_pointer, w.scheduler_stack_pointer);
#endif
#ifdef __SANITIZE_ADDRESS__
    __sanitizer_finish_switch_fiber(f.asan_fake_stack, &w.asan_scheduler_stack_bottom, &w.asan_scheduler_stack_size);
#endif
}

// Ends the launch from inside a kernel thread (failed assert, __trap, misuse of an intrinsic).
[[noreturn]] inline void abort_launch(const std::string& message) {
    current_worker().launch->fail(message);
    current_fiber().state = FiberState::Aborted;
    yield_to_scheduler();
    __builtin_unreachable();
}

// Makes the cp.async copies of commit groups below `group_limit` (and, for ~0u, every copy,
// committed or not) land in shared memory, in issue order.
CUDECONV_EMU_UNTRACED inline void complete_copies(Fiber& f, unsigned group_limit) {
    auto& pending = f.pending_copies;
    size_t kept = 0;
    for (size_t i = 0; i < pending.size(); ++i) {
        PendingCopy& copy = pending[i];
        if (group_limit == ~0u || copy.group < group_limit) {
            std::memcpy(copy.destination, copy.bytes, copy.size);
            CUDECONV_EMU_TRACE_POINT(current_worker(), trace::land_copy(current_worker().trace, copy.destination,
                                                                        copy.size, copy.pc));
        } else
            pending[kept++] = copy;
    }
    pending.resize(kept);
}

[[noreturn]] inline void fiber_main() {
    Worker& w = current_worker();
#ifdef __SANITIZE_ADDRESS__
    __sanitizer_finish_switch_fiber(nullptr, &w.asan_scheduler_stack_bottom, &w.asan_scheduler_stack_size);
#endif
    w.launch->invoke(w.launch->params);
    complete_copies(current_fiber(), ~0u);  // a thread's copies still land after it exits
    current_fiber().state = FiberState::Exited;
    yield_to_scheduler();
    __builtin_unreachable();
}

CUDECONV_EMU_UNTRACED inline void start_fiber(Worker& w, Fiber& f) {
    if (!f.stack) {
        // Layout of the aligned region: header page, guard page, stack.
        const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
        void* mem = mmap(nullptr, 2 * kFiberStackRegion, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
        if (mem == MAP_FAILED) {
            std::perror("cudeconv emulator: mmap of a fiber stack failed");
            std::abort();
        }
        const uintptr_t start = reinterpret_cast<uintptr_t>(mem);
        const uintptr_t region = (start + kFiberStackRegion - 1) & ~uintptr_t(kFiberStackRegion - 1);
        if (region > start) munmap(mem, region - start);
        munmap(reinterpret_cast<void*>(region + kFiberStackRegion), start + kFiberStackRegion - region);
        stack_header_of(region) = StackHeader{&f, &w};
        mprotect(reinterpret_cast<void*>(region + page), page, PROT_NONE);  // overflow faults, not corrupts
        f.stack = reinterpret_cast<unsigned char*>(region + 2 * page);
        f.stack_size = kFiberStackRegion - 2 * page;
    }
#ifdef CUDECONV_EMU_USE_UCONTEXT
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = f.stack_size;
    f.context.uc_link = nullptr;
    makecontext(&f.context, reinterpret_cast<void (*)()>(&fiber_main), 0);
#else
    // Initial frame popped by cudeconv_emu_switch_stack: six zeroed registers, then the address
    // of fiber_main, leaving the stack aligned as if fiber_main had been called.
    // The top is staggered per thread so the hot stack tops of a block do not all map to the
    // same cache sets.
    const size_t stagger = (f.linear_idx % 64) * 64 + (f.linear_idx / 64 % 16) * 4096;
    void** sp = reinterpret_cast<void**>(reinterpret_cast<uintptr_t>(f.stack + f.stack_size - stagger) & ~uintptr_t(15));
    *--sp = nullptr;  // fiber_main's (never used) return address
    *--sp = reinterpret_cast<void*>(&fiber_main);
    for (int i = 0; i < 6; ++i) *--sp = nullptr;
    f.stack_pointer = sp;
#endif
    f.state = FiberState::Ready;
    f.asan_fake_stack = nullptr;
    f.pending_copies.clear();
    f.committed_copy_groups = 0;
}

// ---- per-thread worker ---------------------------------------------------------------------
// The loaded segment of `info`'s object that holds this module's code, or null for another object.
inline const ElfW(Phdr)* module_code_segment(const dl_phdr_info* info) {
    const uintptr_t here = reinterpret_cast<uintptr_t>(&module_code_segment);
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const ElfW(Phdr)& segment = info->dlpi_phdr[i];
        const uintptr_t start = info->dlpi_addr + segment.p_vaddr;
        if (segment.p_type == PT_LOAD && here >= start && here < start + segment.p_memsz) return &segment;
    }
    return nullptr;
}

// Finds this thread's instance of the module's thread-local storage (dl_iterate_phdr callback).
inline int find_module_tls(dl_phdr_info* info, size_t, void* out) {
    if (!module_code_segment(info)) return 0;
    Worker& w = *static_cast<Worker*>(out);
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        if (info->dlpi_phdr[i].p_type == PT_TLS && info->dlpi_tls_data) {
            w.tls_begin = static_cast<unsigned char*>(info->dlpi_tls_data);
            w.tls_end = w.tls_begin + info->dlpi_phdr[i].p_memsz;
        }
    }
    return 1;
}

CUDECONV_EMU_UNTRACED inline Worker& this_thread_worker(Launch& launch) {
    if (!tls_worker) {  // this first access also allocates the thread's TLS block
        Worker* w = new Worker();
        w->fibers.reset(new Fiber[kMaxThreadsPerBlock]());
        w->os_thread = pthread_self();
        dl_iterate_phdr(find_module_tls, w);
        if (!(w->tls_begin <= dynamic_shared && dynamic_shared + kMaxDynamicShared <= w->tls_end)) {
            std::fprintf(stderr, "cudeconv emulator: cannot locate the module's thread-local storage\n");
            std::abort();
        }
#ifdef CUDECONV_EMU_TRACE
        w->trace = trace::attach(w->tls_begin, w->tls_end, dynamic_shared, dynamic_shared + kMaxDynamicShared,
                                 &tls_worker, sizeof tls_worker);
#endif
        tls_worker = w;
    }
    Worker& w = *tls_worker;
    w.launch = &launch;
    w.grid_dim = launch.grid_dim;
    w.block_dim = launch.block_dim;
#ifdef __SANITIZE_ADDRESS__
    // A sanitized process runs exactly one launch: bytes past its dynamic shared memory are
    // poisoned, so ASan reports accesses to them (as use-after-poison).
    __asan_poison_memory_region(dynamic_shared + launch.dynamic_shared_bytes,
                                kMaxDynamicShared - launch.dynamic_shared_bytes);
#endif
    {
        std::lock_guard<std::mutex> lock(launch.timeout_mutex);
        launch.workers.push_back(&w);
    }
    return w;
}

// Uninitialised shared memory reads as NaN / -1 (0xff bytes) rather than as zeros or as what
// the previous block left: every byte of the module's thread-local storage except the worker
// pointer is shared memory (dynamic shared memory only up to the launch's size).
CUDECONV_EMU_UNTRACED inline void poison_shared_memory(Worker& w) {
    unsigned char* const dynamic_end = dynamic_shared + kMaxDynamicShared;
    std::memset(w.tls_begin, 0xff, static_cast<size_t>(dynamic_shared - w.tls_begin));
    std::memset(dynamic_shared, 0xff, w.launch->dynamic_shared_bytes);
    std::memset(dynamic_end, 0xff, static_cast<size_t>(w.tls_end - dynamic_end));
    tls_worker = &w;
}

// ---- warp collectives ----------------------------------------------------------------------
inline std::string hex(unsigned v) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "0x%08x", v);
    return buf;
}

// Completes every warp-synchronous call the lanes [begin, end) of one warp are waiting in.
// Lanes named in a call's mask must all be waiting in a call with the same mask (on a GPU
// anything else deadlocks or is undefined); lanes beyond the end of a partial last warp do not
// exist and are ignored.
CUDECONV_EMU_UNTRACED inline bool complete_warp_collectives(Worker& w, unsigned begin, unsigned end) {
    Fiber* fibers = w.fibers.get();
    const unsigned num_lanes = end - begin;
    const unsigned existing = num_lanes == 32 ? ~0u : (1u << num_lanes) - 1u;
    unsigned done = 0;
    for (unsigned lane = 0; lane < num_lanes; ++lane) {
        Fiber& f = fibers[begin + lane];
        if (f.state != FiberState::AtWarpCollective || (done >> lane & 1u)) continue;
        const unsigned mask = f.warp_mask;
        const unsigned group = mask & existing;
        std::string problem;
        if (!(mask >> lane & 1u)) problem = "its own lane " + std::to_string(lane) + " is not in the mask";
        for (unsigned other = 0; other < num_lanes && problem.empty(); ++other) {
            if (!(group >> other & 1u)) continue;
            const Fiber& g = fibers[begin + other];
            if (g.state == FiberState::Exited)
                problem = "lane " + std::to_string(other) + " has already exited";
            else if (g.state == FiberState::AtBlockBarrier)
                problem = "lane " + std::to_string(other) + " is waiting at __syncthreads (deadlock)";
            else if (g.warp_mask != mask)
                problem = "lane " + std::to_string(other) + " is in a warp-synchronous call with mask " + hex(g.warp_mask);
            else if (g.warp_operation != f.warp_operation)
                problem = "lane " + std::to_string(other) + " is in " +
                          (g.warp_operation ? g.warp_operation_name : "a shuffle, vote or __syncwarp") + ", not in " +
                          (f.warp_operation ? f.warp_operation_name : "a shuffle, vote or __syncwarp");
        }
        if (problem.empty() && f.warp_operation) {
            // .aligned instructions: every lane of a full warp executes the same instruction.
            if (num_lanes != 32)
                problem = std::string(f.warp_operation_name) + " needs a full warp of 32 threads; this warp has " +
                          std::to_string(num_lanes) + " (blockDim is not a multiple of 32)";
            else if (mask != ~0u)
                problem = std::string(f.warp_operation_name) + " is executed by all 32 lanes together (.sync.aligned)";
            else {
                Fiber* lanes[32];
                for (unsigned other = 0; other < 32; ++other) lanes[other] = &fibers[begin + other];
                problem = f.warp_operation(w, lanes);
                if (!problem.empty()) {
                    w.launch->fail(std::string(f.warp_operation_name) + " in block " + format_uint3(w.block_idx) +
                                   ", warp " + std::to_string(begin / 32) + ": " + problem);
                    return false;
                }
            }
        }
        if (!problem.empty()) {
            w.launch->fail("warp-synchronous intrinsic misuse in block " + format_uint3(w.block_idx) + ", thread " +
                           format_uint3(f.thread_idx) + " (mask " + hex(mask) + "): " + problem);
            return false;
        }
        unsigned ballot = 0;
        for (unsigned other = 0; other < num_lanes; ++other)
            if ((group >> other & 1u) && fibers[begin + other].warp_value != 0) ballot |= 1u << other;
        for (unsigned other = 0; other < num_lanes; ++other) {
            if (!(group >> other & 1u)) continue;
            Fiber& g = fibers[begin + other];
            const int src = g.warp_source_lane;
            const bool valid = src >= 0 && src < 32 && (group >> src & 1u);
            g.warp_result = valid ? fibers[begin + src].warp_value : g.warp_value;
            g.warp_ballot = ballot;
            g.warp_group = group;
            g.state = FiberState::Ready;
        }
        done |= group;
        if (f.warp_fence) CUDECONV_EMU_TRACE_POINT(w, trace::warp_fence(w.trace, begin / kWarpSize));
    }
    return true;
}

// Joins the warp-synchronous call of the lanes in `mask`; the scheduler fills in the results.
inline Fiber& warp_exchange(unsigned mask, uint64_t value, int source_lane, bool fence = false) {
    Fiber& f = current_fiber();
    f.warp_fence = fence;
    f.warp_operation = nullptr;
    f.warp_mask = mask;
    f.warp_value = value;
    f.warp_source_lane = source_lane;
    f.state = FiberState::AtWarpCollective;
    yield_to_scheduler();
    return f;
}

template <class T>
inline T shuffle(unsigned mask, T value, int source_lane) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                  "warp shuffles move trivially copyable values of at most 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    const uint64_t result = warp_exchange(mask, bits, source_lane).warp_result;
    T out;
    std::memcpy(static_cast<void*>(&out), &result, sizeof(T));
    return out;
}

inline void check_shuffle_width(int width) {
    if (width <= 0 || width > 32 || (width & (width - 1)) != 0)
        abort_launch("warp shuffle width " + std::to_string(width) + " is not a power of two <= 32 (" + where_am_i() + ")");
}

// ---- block scheduler -----------------------------------------------------------------------
// Ends a block that the watchdog stopped, describing where its threads were.
inline bool stop_timed_out_block(Worker& w, const Fiber* stuck, unsigned long long barriers) {
    unsigned waiting = 0, in_warp_call = 0, exited = 0, not_run = 0;
    for (unsigned t = 0; t < w.num_threads; ++t) {
        const FiberState state = w.fibers[t].state;
        waiting += state == FiberState::AtBlockBarrier;
        in_warp_call += state == FiberState::AtWarpCollective;
        exited += state == FiberState::Exited;
        not_run += state == FiberState::Ready;
    }
    std::string report = "block " + format_uint3(w.block_idx) + ": ";
    if (stuck)
        report += "thread " + format_uint3(stuck->thread_idx) + " was running without reaching a barrier";
    else
        report += "its threads were still meeting at barriers (" + std::to_string(barriers) + " __syncthreads so far)";
    report += "; " + std::to_string(waiting) + " threads waiting at __syncthreads, " + std::to_string(in_warp_call) +
              " in a warp-synchronous call, " + std::to_string(not_run) + " not yet run since the last barrier, " +
              std::to_string(exited) + " exited";
    std::lock_guard<std::mutex> lock(w.launch->timeout_mutex);
    w.launch->timeout_report += (w.launch->timeout_report.empty() ? "" : "; ") + report;
    return false;
}

// ---- schedules -----------------------------------------------------------------------------
// SplitMix64: a well-mixed 64-bit value from any input, and the step of a small generator.
inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

struct ScheduleRandom {
    uint64_t state;
    // A stream that depends only on (seed, block, barrier): the same orders under any number of
    // OpenMP threads and whichever worker runs the block.
    ScheduleRandom(uint64_t seed, unsigned long long block, unsigned long long barrier)
        : state(mix64(mix64(mix64(seed) ^ block) ^ barrier)) {}
    unsigned below(unsigned n) {  // uniform enough in [0, n): n <= 1024 against 2^64
        state += 0x9e3779b97f4a7c15ull;
        return static_cast<unsigned>(mix64(state) % n);
    }
    template <class T>
    void shuffle(T* items, unsigned n) {  // Fisher-Yates
        for (unsigned i = n; i > 1; --i) std::swap(items[i - 1], items[below(i)]);
    }
};

// Fills warp_order with the block's warps and lane_orders[warp] with the lanes of each warp in
// the order they run until the next barrier.
CUDECONV_EMU_UNTRACED inline void draw_schedule(const Launch& launch, unsigned long long linear_block, unsigned long long barrier,
                          unsigned num_threads, unsigned* warp_order, unsigned char (*lane_orders)[kWarpSize]) {
    const unsigned num_warps = (num_threads + kWarpSize - 1) / kWarpSize;
    for (unsigned warp = 0; warp < num_warps; ++warp) {
        const unsigned lanes = std::min(kWarpSize, num_threads - warp * kWarpSize);
        const bool descending = launch.schedule == Schedule::Descending;
        warp_order[warp] = descending ? num_warps - 1 - warp : warp;
        for (unsigned lane = 0; lane < lanes; ++lane)
            lane_orders[warp][lane] = static_cast<unsigned char>(descending ? lanes - 1 - lane : lane);
    }
    if (launch.schedule != Schedule::Random) return;
    ScheduleRandom random(launch.schedule_seed, linear_block, barrier);
    random.shuffle(warp_order, num_warps);
    for (unsigned warp = 0; warp < num_warps; ++warp)
        random.shuffle(lane_orders[warp], std::min(kWarpSize, num_threads - warp * kWarpSize));
}

CUDECONV_EMU_UNTRACED inline bool run_block(Worker& w, unsigned long long linear_block) {
    const dim3 g = w.grid_dim, b = w.block_dim;
    w.block_idx = uint3{static_cast<unsigned>(linear_block % g.x), static_cast<unsigned>(linear_block / g.x % g.y),
                        static_cast<unsigned>(linear_block / (static_cast<unsigned long long>(g.x) * g.y))};
    poison_shared_memory(w);
    const unsigned block_index[3] = {w.block_idx.x, w.block_idx.y, w.block_idx.z};
    CUDECONV_EMU_TRACE_POINT(w, trace::block_begin(w.trace, block_index));
    const unsigned n = b.x * b.y * b.z;
    w.num_threads = n;
    Fiber* fibers = w.fibers.get();
    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = fibers[t];
        f.thread_idx = uint3{t % b.x, t / b.x % b.y, t / (b.x * b.y)};
        f.linear_idx = t;
        f.lane = t % kWarpSize;
        start_fiber(w, f);
    }
    unsigned warp_order[kMaxThreadsPerBlock / kWarpSize];
    unsigned char lane_orders[kMaxThreadsPerBlock / kWarpSize][kWarpSize];
    unsigned live = n;
    for (unsigned long long barriers = 0;; ++barriers) {
        // Run warp by warp, in the schedule's order, until every live thread waits at
        // __syncthreads; within a warp, lanes run in the schedule's order until each reaches a
        // barrier or a warp-synchronous call, which completes once all its lanes are in it.
        draw_schedule(*w.launch, linear_block, barriers, n, warp_order, lane_orders);
        for (unsigned i = 0; i < (n + kWarpSize - 1) / kWarpSize; ++i) {
            const unsigned warp = warp_order[i];
            const unsigned begin = warp * kWarpSize, end = std::min(n, begin + kWarpSize);
            const unsigned char* lane_order = lane_orders[warp];
            for (;;) {
                if (w.launch->timed_out.load(std::memory_order_relaxed)) return stop_timed_out_block(w, nullptr, barriers);
                unsigned active = 0;
                for (unsigned t = begin; t < end; ++t)
                    if (fibers[t].state != FiberState::Exited) active |= 1u << (t - begin);
                w.active_lanes[warp] = active;
                bool warp_waiting = false;
                for (unsigned j = 0; j < end - begin; ++j) {
                    Fiber& f = fibers[begin + lane_order[j]];
                    if (f.state == FiberState::Ready) {
                        resume_fiber(w, f);
                        if (f.state == FiberState::Exited) --live;
                        if (f.state == FiberState::Aborted) return false;
                        if (f.state == FiberState::Interrupted) return stop_timed_out_block(w, &f, barriers);
                    }
                    warp_waiting |= f.state == FiberState::AtWarpCollective;
                }
                if (!warp_waiting) break;
                if (!complete_warp_collectives(w, begin, end)) return false;
            }
        }
        if (live == 0) {
#ifdef CUDECONV_EMU_TRACE
            std::string race;
            if (w.trace->mode && !trace::block_end(w.trace, race)) {
                w.launch->fail(race);
                return false;
            }
#endif
            return true;
        }
        CUDECONV_EMU_TRACE_POINT(w, trace::barrier(w.trace));
        // Threads that exited do not take part in later barriers (as on sm_70+).
        unsigned count = 0;
        for (unsigned t = 0; t < n; ++t)
            if (fibers[t].state == FiberState::AtBlockBarrier) count += fibers[t].barrier_predicate != 0;
        w.barrier_count = count;
        w.barrier_arrived = live;
        for (unsigned t = 0; t < n; ++t)
            if (fibers[t].state == FiberState::AtBlockBarrier) fibers[t].state = FiberState::Ready;
    }
}

// ---- watchdog ------------------------------------------------------------------------------
// Exit status of a sanitizer child whose launch failed (see cudeconv_emu_runner.cpp).
constexpr int kRunnerLaunchFailed = 3;
// How long stopped workers get to wind down before the watchdog ends the process.
constexpr std::chrono::seconds kStopGrace{2};

#ifdef CUDECONV_EMU_CAN_INTERRUPT
// Where a fiber may be stopped from a signal handler: the module's own code (kernel code and
// the shim inlined into it), which holds no lock of the C library, but not the stack switch.
struct CodeRange {
    uintptr_t begin = 0, end = 0;
};

inline int find_module_code(dl_phdr_info* info, size_t, void* out) {
    const ElfW(Phdr)* segment = module_code_segment(info);
    if (!segment) return 0;
    const uintptr_t start = info->dlpi_addr + segment->p_vaddr;
    *static_cast<CodeRange*>(out) = CodeRange{start, start + segment->p_memsz};
    return 1;
}

inline CodeRange module_code() {
    static const CodeRange range = [] {
        CodeRange r;
        dl_iterate_phdr(find_module_code, &r);
        return r;
    }();
    return range;
}

extern "C" char cudeconv_emu_switch_stack_end[];

// SIGURG handler: the watchdog queues it to each worker thread with the worker as its value.
// A thread found running kernel code on a fiber stack switches to the scheduler for good,
// abandoning the fiber (start_fiber gives its stack a fresh frame in the next block).
inline void interrupt_kernel_thread(int, siginfo_t* info, void* context) {
    if (info->si_code != SI_QUEUE || info->si_pid != getpid()) return;
    const Worker& w = *static_cast<const Worker*>(info->si_value.sival_ptr);
    Fiber* f = w.running.load(std::memory_order_relaxed);
    if (!f) return;
    const greg_t* registers = static_cast<const ucontext_t*>(context)->uc_mcontext.gregs;
    const uintptr_t pc = static_cast<uintptr_t>(registers[REG_RIP]);
    const uintptr_t sp = static_cast<uintptr_t>(registers[REG_RSP]);
    const uintptr_t stack = reinterpret_cast<uintptr_t>(f->stack);
    const CodeRange code = module_code();
    if (sp < stack || sp >= stack + f->stack_size || pc < code.begin || pc >= code.end ||
        (pc >= reinterpret_cast<uintptr_t>(&cudeconv_emu_switch_stack) &&
         pc < reinterpret_cast<uintptr_t>(cudeconv_emu_switch_stack_end)))
        return;  // not stoppable here; the watchdog signals again shortly
    f->state = FiberState::Interrupted;
    yield_to_scheduler();
}
#endif

// Stops a launch that runs longer than its time limit. Threads meeting at barriers stop at the
// next one; a thread that never yields (a spin-wait on another thread of its block, which only
// runs when this one reaches a barrier) is interrupted by a signal where that is possible.
// Workers that have not stopped after kStopGrace end the process with a diagnostic.
class Watchdog {
  public:
    Watchdog(Launch& launch, const char* kernel, double seconds) : launch_(launch), kernel_(kernel), seconds_(seconds) {
        if (seconds > 0) thread_ = std::thread([this] { watch(); });
    }
    ~Watchdog() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            finished_ = true;
        }
        wake_.notify_one();
        if (thread_.joinable()) thread_.join();
    }

  private:
    void watch() {
        std::unique_lock<std::mutex> lock(mutex_);
        const auto finished = [this] { return finished_; };
        if (wake_.wait_for(lock, std::chrono::duration<double>(seconds_), finished)) return;
        launch_.timed_out.store(true);
        const auto give_up = std::chrono::steady_clock::now() + kStopGrace;
#ifdef CUDECONV_EMU_CAN_INTERRUPT
        module_code();  // computed here, not in the signal handler
        // SIGURG: ignored by default, so a signal still in flight after the old action is back
        // is harmless.
        struct sigaction action {}, previous {};
        action.sa_sigaction = interrupt_kernel_thread;
        action.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESTART;  // NODEFER: the handler never returns
        sigemptyset(&action.sa_mask);
        sigaction(SIGURG, &action, &previous);
        while (!wake_.wait_for(lock, std::chrono::milliseconds(10), finished) &&
               std::chrono::steady_clock::now() < give_up) {
            std::lock_guard<std::mutex> workers_lock(launch_.timeout_mutex);
            for (Worker* w : launch_.workers) {
                sigval value;
                value.sival_ptr = w;
                pthread_sigqueue(w->os_thread, SIGURG, value);
            }
        }
        sigaction(SIGURG, &previous, nullptr);
#else
        wake_.wait_until(lock, give_up, finished);
#endif
        if (!finished_) end_process();
    }

    // The stuck workers cannot be unwound: report them without taking any lock they may hold.
    [[noreturn]] void end_process() {
        char seconds[32];
        std::snprintf(seconds, sizeof seconds, "%g", seconds_);
        std::string message = std::string("cudeconv emulator: kernel '") + kernel_ + "' did not finish within " +
                              seconds + " s (CUDECONV_EMULATOR_TIMEOUT) and could not be stopped;";
        {
            std::lock_guard<std::mutex> lock(launch_.timeout_mutex);
            for (const Worker* w : launch_.workers)
                if (const Fiber* f = w->running.load(std::memory_order_acquire))
                    message += " block " + format_uint3(w->block_idx) + " thread " + format_uint3(f->thread_idx) +
                               " is still running;";
        }
        message += " a thread waiting for another thread of its block (a spin-wait or a deadlock) never finishes "
                   "in the emulator, which runs the threads of a block one at a time between barriers\n";
        if (write(STDERR_FILENO, message.data(), message.size()) < 0) {}
#ifdef __SANITIZE_ADDRESS__
        _exit(kRunnerLaunchFailed);  // a sanitizer child: the parent raises EmulatorLaunchError
#else
        std::abort();
#endif
    }

    Launch& launch_;
    const char* kernel_;
    const double seconds_;
    std::mutex mutex_;
    std::condition_variable wake_;
    bool finished_ = false;
    std::thread thread_;
};

CUDECONV_EMU_UNTRACED inline int launch(const char* kernel, const unsigned* dims, unsigned long long dynamic_shared_bytes, void** params,
                  double timeout_seconds, unsigned schedule, unsigned long long schedule_seed, void (*invoke)(void**),
                  char* error, unsigned long long error_size) {
    Launch launch;
    launch.grid_dim = dim3(dims[0], dims[1], dims[2]);
    launch.block_dim = dim3(dims[3], dims[4], dims[5]);
    launch.dynamic_shared_bytes = dynamic_shared_bytes;
    launch.schedule = static_cast<Schedule>(schedule);
    launch.schedule_seed = schedule_seed;
    launch.invoke = invoke;
    launch.params = params;
    const long long num_blocks = static_cast<long long>(dims[0]) * dims[1] * dims[2];
#ifdef CUDECONV_EMU_TRACE
    trace::Session* const session = trace::launch_begin();
#endif
    {
        Watchdog watchdog(launch, kernel, timeout_seconds);
#pragma omp parallel if (num_blocks > 1)
        {
            Worker& w = this_thread_worker(launch);
#ifdef CUDECONV_EMU_TRACE
            trace::worker_begin(w.trace, session, dims + 3, dynamic_shared_bytes);
#endif
#pragma omp for schedule(dynamic, 1)
            for (long long block = 0; block < num_blocks; ++block)
                if (!launch.stopping()) run_block(w, static_cast<unsigned long long>(block));
#ifdef CUDECONV_EMU_TRACE
            trace::worker_end(w.trace);
#endif
        }
    }
#ifdef CUDECONV_EMU_TRACE
    trace::launch_end(session);
#endif
    if (launch.timed_out.load()) {
        std::snprintf(error, error_size,
                      "timed out: it did not finish within %g s (CUDECONV_EMULATOR_TIMEOUT): %s. A thread waiting "
                      "for another thread of its block (a spin-wait or a deadlock) never finishes in the emulator, "
                      "which runs the threads of a block one at a time, switching only at barriers and "
                      "warp-synchronous calls",
                      timeout_seconds, launch.timeout_report.c_str());
        return 1;
    }
    if (!launch.failed.load()) return 0;
    std::snprintf(error, error_size, "%s", launch.error.c_str());
    return 1;
}

// ---- entry points: signature description and type-erased invocation ------------------------
template <class T>
inline std::string type_name() {
    int status = 0;
    char* demangled = abi::__cxa_demangle(typeid(T).name(), nullptr, nullptr, &status);
    std::string name = status == 0 && demangled ? demangled : typeid(T).name();
    std::free(demangled);
    return name;
}

template <class T, class = void>
struct IsComplete : std::false_type {};
template <class T>
struct IsComplete<T, std::void_t<decltype(sizeof(T))>> : std::true_type {};

// One-letter kind the Python side matches NumPy dtypes against.
template <class T>
constexpr char kind_code() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_same_v<U, bool>) return 'b';
    else if constexpr (std::is_floating_point_v<U>) return 'f';
    else if constexpr (std::is_integral_v<U>) return std::is_signed_v<U> ? 'i' : 'u';
    else if constexpr (std::is_enum_v<U>) return kind_code<std::underlying_type_t<U>>();
#ifdef __CUDA_FP16_TYPES_EXIST__
    else if constexpr (std::is_same_v<U, __half>) return 'h';
#endif
#ifdef __CUDA_BF16_TYPES_EXIST__
    else if constexpr (std::is_same_v<U, __nv_bfloat16>) return 'B';
#endif
    else return 'v';
}

// "P|c|f|4|float const*": pointer or scalar, const pointee, kind, element size, C type.
template <class T>
inline std::string describe_parameter() {
    if constexpr (std::is_pointer_v<T>) {
        using Pointee = std::remove_pointer_t<T>;
        size_t size = 0;
        if constexpr (!std::is_void_v<Pointee> && !std::is_function_v<Pointee> && IsComplete<Pointee>::value)
            size = sizeof(Pointee);
        return std::string("P|") + (std::is_const_v<Pointee> ? 'c' : 'm') + "|" + kind_code<Pointee>() + "|" +
               std::to_string(size) + "|" + type_name<T>();
    } else {
        return std::string("S|m|") + kind_code<T>() + "|" + std::to_string(sizeof(T)) + "|" + type_name<T>();
    }
}

template <auto Kernel>
struct Entry;
template <class... Args, void (*Kernel)(Args...)>
struct Entry<Kernel> {
    static void invoke(void** params) { call(params, std::index_sequence_for<Args...>{}); }
    template <size_t... I>
    static void call(void** params, std::index_sequence<I...>) {
        Kernel(*static_cast<Args*>(params[I])...);
    }
    static std::string signature() {
        std::string s;
        ((s += (s.empty() ? "" : ";") + describe_parameter<Args>()), ...);
        return s;
    }
};

using LaunchFunction = int (*)(const unsigned*, unsigned long long, void**, double, unsigned, unsigned long long, char*,
                               unsigned long long);

struct KernelRecord {
    std::string name;
    LaunchFunction launch;
    std::string signature;
    long long max_threads;  // from __launch_bounds__, 0 when absent
};

inline std::vector<KernelRecord>& kernel_registry() {
    static std::vector<KernelRecord> registry;
    return registry;
}

inline int register_kernel(const char* name, LaunchFunction fn, std::string signature, long long max_threads) {
    kernel_registry().push_back(KernelRecord{name, fn, std::move(signature), max_threads});
    return 0;
}

}  // namespace cudeconv_emu

// One line per kernel: name \t max_threads \t parameter;parameter;...
extern "C" __attribute__((visibility("default"))) const char* cudeconv_emu_describe() {
    static const std::string description = [] {
        std::string s;
        for (const auto& k : cudeconv_emu::kernel_registry())
            s += k.name + "\t" + std::to_string(k.max_threads) + "\t" + k.signature + "\n";
        return s;
    }();
    return description.c_str();
}

#define CUDECONV_EMU_EXPORT_KERNEL(NAME, MAX_THREADS)                                                              \
    extern "C" __attribute__((visibility("default"))) int cudeconv_emu_launch_##NAME(                             \
        const unsigned* dims, unsigned long long shared_bytes, void** params, double timeout_seconds,              \
        unsigned schedule, unsigned long long schedule_seed, char* error, unsigned long long error_size) {         \
        return ::cudeconv_emu::launch(#NAME, dims, shared_bytes, params, timeout_seconds, schedule, schedule_seed,  \
                                      &::cudeconv_emu::Entry<&NAME>::invoke, error, error_size);                   \
    }                                                                                                              \
    static const int cudeconv_emu_registered_##NAME = ::cudeconv_emu::register_kernel(                            \
        #NAME, &cudeconv_emu_launch_##NAME, ::cudeconv_emu::Entry<&NAME>::signature(), (MAX_THREADS));

// ---- built-in variables --------------------------------------------------------------------
#define threadIdx (static_cast<const uint3&>(::cudeconv_emu::current_fiber().thread_idx))
#define blockIdx (static_cast<const uint3&>(::cudeconv_emu::current_worker().block_idx))
#define blockDim (static_cast<const dim3&>(::cudeconv_emu::current_worker().block_dim))
#define gridDim (static_cast<const dim3&>(::cudeconv_emu::current_worker().grid_dim))

// ---- assert / trap -------------------------------------------------------------------------
// glibc's assert() calls __assert_fail; this hidden definition takes precedence inside this
// module, so a failed kernel assert ends the launch with an error instead of killing the process.
extern "C" __attribute__((visibility("hidden"), noreturn)) void __assert_fail(const char* assertion,
                                                                             const char* file, unsigned int line,
                                                                             const char* function) noexcept {
    std::string message = std::string(file) + ":" + std::to_string(line) + ": " + function + ": Assertion `" +
                          assertion + "` failed";
    if (!cudeconv_emu::tls_worker || !cudeconv_emu::tls_worker->running.load()) {  // not kernel code
        std::fprintf(stderr, "%s\n", message.c_str());
        std::abort();
    }
    cudeconv_emu::abort_launch(message + " (" + cudeconv_emu::where_am_i() + ")");
}

#ifdef CUDECONV_EMU_CHECK_ALIGNMENT
// Plain builds are compiled with -fsanitize=alignment (see _compiler.py): before every access
// through a pointer or reference the compiler tests the address against the type's alignment
// (one test and a branch) and calls these on a misaligned one, which on a GPU is a "misaligned
// address" error. They stand in for UBSan's runtime, which is not linked; hidden, so each
// module calls its own.
namespace cudeconv_emu {
struct UbsanTypeMismatch {  // UBSan's TypeMismatchData (its v1 ABI)
    const char* file;
    unsigned line, column;
    const struct {
        unsigned short kind, info;
        char name[1];
    }* type;
    unsigned char log_alignment;
    unsigned char check_kind;
};

[[noreturn]] inline void misaligned_access(void* data, void* address) {
    const auto& d = *static_cast<const UbsanTypeMismatch*>(data);
    const char* access = d.check_kind == 0 ? "load of" : d.check_kind == 1 ? "store to" : "access to";
    const std::string message = std::string("misaligned ") + access + " " + d.type->name +
                                " at address " + pointer_text(address) + ", which needs " +
                                std::to_string(1u << d.log_alignment) + "-byte alignment (" + d.file + ":" +
                                std::to_string(d.line) + ":" + std::to_string(d.column);
    if (!tls_worker || !tls_worker->running.load()) {  // not kernel code: a bug in the emulator itself
        std::fprintf(stderr, "cudeconv emulator: %s)\n", message.c_str());
        std::abort();
    }
    abort_launch(message + ", " + where_am_i() + "); on a GPU this is a misaligned address error");
}
}  // namespace cudeconv_emu
__asm__(".hidden __ubsan_handle_type_mismatch_v1\n.hidden __ubsan_handle_type_mismatch_v1_abort");
extern "C" void __ubsan_handle_type_mismatch_v1(void* data, void* address) {
    cudeconv_emu::misaligned_access(data, address);
}
extern "C" void __ubsan_handle_type_mismatch_v1_abort(void* data, void* address) {
    cudeconv_emu::misaligned_access(data, address);
}
#endif

[[noreturn]] inline void __trap() { cudeconv_emu::abort_launch("__trap() called (" + cudeconv_emu::where_am_i() + ")"); }

// ---- synchronisation -----------------------------------------------------------------------
inline int cudeconv_emu_block_barrier(int predicate) {
    cudeconv_emu::Fiber& f = cudeconv_emu::current_fiber();
    f.barrier_predicate = predicate;
    f.state = cudeconv_emu::FiberState::AtBlockBarrier;
    cudeconv_emu::yield_to_scheduler();
    return static_cast<int>(cudeconv_emu::current_worker().barrier_count);
}
inline void __syncthreads() { cudeconv_emu_block_barrier(0); }
inline int __syncthreads_count(int predicate) { return cudeconv_emu_block_barrier(predicate); }
inline int __syncthreads_or(int predicate) { return cudeconv_emu_block_barrier(predicate) != 0; }
inline int __syncthreads_and(int predicate) {
    return cudeconv_emu_block_barrier(predicate) == static_cast<int>(cudeconv_emu::current_worker().barrier_arrived);
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---- warp intrinsics -----------------------------------------------------------------------
inline void __syncwarp(unsigned mask = 0xffffffffu) { cudeconv_emu::warp_exchange(mask, 0, -1, true); }
inline unsigned __ballot_sync(unsigned mask, int predicate) {
    return cudeconv_emu::warp_exchange(mask, predicate != 0, -1).warp_ballot;
}
inline int __any_sync(unsigned mask, int predicate) {
    return cudeconv_emu::warp_exchange(mask, predicate != 0, -1).warp_ballot != 0;
}
inline int __all_sync(unsigned mask, int predicate) {
    const cudeconv_emu::Fiber& f = cudeconv_emu::warp_exchange(mask, predicate != 0, -1);
    return f.warp_ballot == f.warp_group;
}
// Lanes of this warp that had not exited at its last barrier or warp collective (the emulator
// does not model divergence), the same whatever order the lanes run in.
inline unsigned __activemask() {
    return cudeconv_emu::current_worker().active_lanes[cudeconv_emu::current_fiber().linear_idx / 32];
}
// Source lanes follow PTX shfl.sync: out-of-segment sources read the caller's own value.
template <class T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
    cudeconv_emu::check_shuffle_width(width);
    const int lane = static_cast<int>(cudeconv_emu::current_fiber().lane);
    return cudeconv_emu::shuffle(mask, var, (lane & ~(width - 1)) + (src_lane & (width - 1)));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    cudeconv_emu::check_shuffle_width(width);
    const int lane = static_cast<int>(cudeconv_emu::current_fiber().lane);
    const int src = lane - static_cast<int>(delta);
    return cudeconv_emu::shuffle(mask, var, src < (lane & ~(width - 1)) ? lane : src);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    cudeconv_emu::check_shuffle_width(width);
    const int lane = static_cast<int>(cudeconv_emu::current_fiber().lane);
    const int src = lane + static_cast<int>(delta);
    return cudeconv_emu::shuffle(mask, var, src > (lane | (width - 1)) ? lane : src);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
    cudeconv_emu::check_shuffle_width(width);
    const int lane = static_cast<int>(cudeconv_emu::current_fiber().lane);
    const int src = lane ^ (lane_mask & 31);
    return cudeconv_emu::shuffle(mask, var, src > (lane | (width - 1)) ? lane : src);
}

// ---- atomics (GCC builtins: blocks on different workers run concurrently) ------------------
namespace cudeconv_emu {
// Read-modify-write through compare-and-swap on the value's bits, for types without a native
// atomic instruction (float, double, half, bfloat16, min/max).
template <class T, class Bits, class Op>
inline T atomic_update(T* address, Op op) {
    static_assert(sizeof(T) == sizeof(Bits), "bit-pattern type must match");
    Bits* bits = reinterpret_cast<Bits*>(address);
    Bits expected = __atomic_load_n(bits, __ATOMIC_RELAXED);
    for (;;) {
        T old_value;
        std::memcpy(static_cast<void*>(&old_value), &expected, sizeof(T));
        const T new_value = op(old_value);
        Bits desired;
        std::memcpy(&desired, &new_value, sizeof(T));
        if (__atomic_compare_exchange_n(bits, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return old_value;
    }
}
}  // namespace cudeconv_emu

#define CUDECONV_EMU_INTEGER_ATOMICS(T)                                                                       \
    inline T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }                       \
    inline T atomicSub(T* a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }                       \
    inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }                     \
    inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); }                       \
    inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }                         \
    inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); }                       \
    inline T atomicMin(T* a, T v) {                                                                            \
        return cudeconv_emu::atomic_update<T, T>(a, [v](T old) { return old < v ? old : v; });                 \
    }                                                                                                          \
    inline T atomicMax(T* a, T v) {                                                                            \
        return cudeconv_emu::atomic_update<T, T>(a, [v](T old) { return old > v ? old : v; });                 \
    }                                                                                                          \
    inline T atomicCAS(T* a, T compare, T v) {                                                                 \
        __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);                \
        return compare;                                                                                        \
    }
CUDECONV_EMU_INTEGER_ATOMICS(int)
CUDECONV_EMU_INTEGER_ATOMICS(unsigned int)
CUDECONV_EMU_INTEGER_ATOMICS(unsigned long long)
CUDECONV_EMU_INTEGER_ATOMICS(long long)
#undef CUDECONV_EMU_INTEGER_ATOMICS

inline unsigned short atomicCAS(unsigned short* a, unsigned short compare, unsigned short v) {
    __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return compare;
}
inline unsigned atomicInc(unsigned* a, unsigned limit) {
    return cudeconv_emu::atomic_update<unsigned, unsigned>(a, [limit](unsigned old) { return old >= limit ? 0u : old + 1u; });
}
inline unsigned atomicDec(unsigned* a, unsigned limit) {
    return cudeconv_emu::atomic_update<unsigned, unsigned>(
        a, [limit](unsigned old) { return (old == 0u || old > limit) ? limit : old - 1u; });
}
inline float atomicAdd(float* a, float v) {
    return cudeconv_emu::atomic_update<float, uint32_t>(a, [v](float old) { return old + v; });
}
inline double atomicAdd(double* a, double v) {
    return cudeconv_emu::atomic_update<double, uint64_t>(a, [v](double old) { return old + v; });
}
inline float atomicExch(float* a, float v) {
    return cudeconv_emu::atomic_update<float, uint32_t>(a, [v](float) { return v; });
}
#ifdef __CUDA_FP16_TYPES_EXIST__
inline __half atomicAdd(__half* a, __half v) {
    return cudeconv_emu::atomic_update<__half, uint16_t>(a, [v](__half old) { return __hadd(old, v); });
}
inline __half2 atomicAdd(__half2* a, __half2 v) {
    return cudeconv_emu::atomic_update<__half2, uint32_t>(a, [v](__half2 old) { return __hadd2(old, v); });
}
#endif
#ifdef __CUDA_BF16_TYPES_EXIST__
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* a, __nv_bfloat16 v) {
    return cudeconv_emu::atomic_update<__nv_bfloat16, uint16_t>(a, [v](__nv_bfloat16 old) { return __hadd(old, v); });
}
#endif

// ---- memory access hints -------------------------------------------------------------------
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline T __ldcv(const T* p) { return *p; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

// ---- math: fast/rounding-mode intrinsics map to the plain host functions ------------------
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fmaf_rz(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fmaf_rd(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fmaf_ru(float a, float b, float c) { return fmaf(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fdividef(float a, float b) { return a / b; }
inline float fdividef(float a, float b) { return a / b; }
inline float __expf(float a) { return expf(a); }
inline float __exp10f(float a) { return exp10f(a); }
inline float __logf(float a) { return logf(a); }
inline float __log2f(float a) { return log2f(a); }
inline float __log10f(float a) { return log10f(a); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __sinf(float a) { return sinf(a); }
inline float __cosf(float a) { return cosf(a); }
inline float __tanf(float a) { return tanf(a); }
inline void __sincosf(float a, float* s, float* c) { sincosf(a, s, c); }
inline float __saturatef(float a) { return a < 0.0f ? 0.0f : (a > 1.0f ? 1.0f : a); }
inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
inline double rsqrt(double a) { return 1.0 / sqrt(a); }
inline float __frsqrt_rn(float a) { return 1.0f / sqrtf(a); }

// CUDA's global min/max overload set (crt/math_functions.hpp), including its mixed-sign rules.
#define CUDECONV_EMU_MIN_MAX(R, A, B)                                                       \
    inline R min(A a, B b) { return static_cast<R>(a) < static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); } \
    inline R max(A a, B b) { return static_cast<R>(a) > static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); }
CUDECONV_EMU_MIN_MAX(int, int, int)
CUDECONV_EMU_MIN_MAX(unsigned int, unsigned int, unsigned int)
CUDECONV_EMU_MIN_MAX(unsigned int, int, unsigned int)
CUDECONV_EMU_MIN_MAX(unsigned int, unsigned int, int)
CUDECONV_EMU_MIN_MAX(long, long, long)
CUDECONV_EMU_MIN_MAX(unsigned long, unsigned long, unsigned long)
CUDECONV_EMU_MIN_MAX(unsigned long, long, unsigned long)
CUDECONV_EMU_MIN_MAX(unsigned long, unsigned long, long)
CUDECONV_EMU_MIN_MAX(long long, long long, long long)
CUDECONV_EMU_MIN_MAX(unsigned long long, unsigned long long, unsigned long long)
CUDECONV_EMU_MIN_MAX(unsigned long long, long long, unsigned long long)
CUDECONV_EMU_MIN_MAX(unsigned long long, unsigned long long, long long)
#undef CUDECONV_EMU_MIN_MAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double min(float a, double b) { return fmin(static_cast<double>(a), b); }
inline double max(float a, double b) { return fmax(static_cast<double>(a), b); }
inline double min(double a, float b) { return fmin(a, static_cast<double>(b)); }
inline double max(double a, float b) { return fmax(a, static_cast<double>(b)); }

// ---- bit manipulation and reinterpretation -------------------------------------------------
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
inline int __mul24(int a, int b) { return a * b; }
inline unsigned __umul24(unsigned a, unsigned b) { return a * b; }
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<long long>(a) * b) >> 32); }
inline unsigned __umulhi(unsigned a, unsigned b) {
    return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
namespace cudeconv_emu {
template <class To, class From>
inline To bit_cast(From v) {
    static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
    To out;
    std::memcpy(static_cast<void*>(&out), &v, sizeof(To));
    return out;
}
}  // namespace cudeconv_emu
inline float __int_as_float(int x) { return cudeconv_emu::bit_cast<float>(x); }
inline int __float_as_int(float x) { return cudeconv_emu::bit_cast<int>(x); }
inline float __uint_as_float(unsigned x) { return cudeconv_emu::bit_cast<float>(x); }
inline unsigned __float_as_uint(float x) { return cudeconv_emu::bit_cast<unsigned>(x); }
inline double __longlong_as_double(long long x) { return cudeconv_emu::bit_cast<double>(x); }
inline long long __double_as_longlong(double x) { return cudeconv_emu::bit_cast<long long>(x); }
inline int __float2int_rn(float x) { return static_cast<int>(nearbyintf(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(floorf(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(ceilf(x)); }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(nearbyintf(x)); }
inline unsigned __float2uint_rz(float x) { return static_cast<unsigned>(x); }
inline long long __float2ll_rn(float x) { return static_cast<long long>(nearbyintf(x)); }
inline long long __float2ll_rz(float x) { return static_cast<long long>(x); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
inline float __ll2float_rn(long long x) { return static_cast<float>(x); }
inline float __double2float_rn(double x) { return static_cast<float>(x); }
inline int __double2int_rn(double x) { return static_cast<int>(nearbyint(x)); }
inline int __double2int_rz(double x) { return static_cast<int>(x); }

// ---- tensor-core and async-copy primitives: mma.sync, ldmatrix, cp.async, cvt.rna.tf32 ------
// Implemented as the PTX ISA defines them, so a kernel that puts an element in the wrong register
// or reads a tile before its copy has landed computes a wrong answer here as on the GPU.
// kernels/mma.cuh is the only caller: it maps its wrappers onto these under CUDECONV_EMULATOR.
namespace cudeconv_emu {

// Joins a warp collective whose per-lane operands live at `operands` (on this fiber's stack).
inline void warp_operation(WarpOperation operation, const char* name, void* operands) {
    Fiber& f = current_fiber();
    f.warp_fence = false;
    f.warp_operation = operation;
    f.warp_operation_name = name;
    f.warp_operands = operands;
    f.warp_mask = ~0u;
    f.warp_value = 0;
    f.warp_source_lane = -1;
    f.state = FiberState::AtWarpCollective;
    yield_to_scheduler();
}

// Is [address, address + bytes) inside this block's shared memory (static __shared__ variables,
// or the dynamic buffer up to the launch's size)?
inline bool in_shared_memory(const Worker& w, const void* address, size_t bytes) {
    const unsigned char* p = static_cast<const unsigned char*>(address);
    const unsigned char* dynamic_end = dynamic_shared + kMaxDynamicShared;
    const unsigned char* worker_pointer = reinterpret_cast<const unsigned char*>(&tls_worker);
    if (p >= dynamic_shared && p < dynamic_end) return p + bytes <= dynamic_shared + w.launch->dynamic_shared_bytes;
    if (p < w.tls_begin || p + bytes > w.tls_end) return false;
    if (p < dynamic_end && p + bytes > dynamic_shared) return false;
    return p + bytes <= worker_pointer || p >= worker_pointer + sizeof(tls_worker);
}

// ---- cvt.rna.tf32.f32 and the operand formats
// Round to nearest, ties away from zero, to 10 mantissa bits: the low 13 bits of the result are
// zero. Infinities stay; a NaN stays a (quiet) NaN; a finite value may round up to infinity.
inline unsigned float_to_tf32(float x) {
    const unsigned bits = bit_cast<unsigned>(x);
    if ((bits & 0x7f800000u) == 0x7f800000u)
        return (bits & 0x007fffffu) ? ((bits | 0x00400000u) & 0xffffe000u) : bits;
    return (bits + 0x1000u) & 0xffffe000u;  // magnitude + half an ulp, truncated
}
// A .tf32 register as the tensor core reads it: only its top 19 bits take part.
inline double tf32_operand(unsigned bits) { return static_cast<double>(bit_cast<float>(bits & 0xffffe000u)); }
inline double half_bits_to_double(unsigned h) {
    const unsigned sign = h >> 15 & 1u, exponent = h >> 10 & 0x1fu, mantissa = h & 0x3ffu;
    double magnitude;
    if (exponent == 0x1fu) magnitude = mantissa ? NAN : INFINITY;
    else if (exponent == 0) magnitude = std::ldexp(static_cast<double>(mantissa), -24);
    else magnitude = std::ldexp(static_cast<double>(mantissa | 0x400u), static_cast<int>(exponent) - 25);
    return sign ? -magnitude : magnitude;
}
inline double bfloat16_bits_to_double(unsigned b) { return static_cast<double>(bit_cast<float>((b & 0xffffu) << 16)); }

// ---- mma.sync.aligned.m16n8k{8,16}.row.col.f32.{tf32,f16,bf16}.f32
struct MmaOperands {
    const unsigned* a;
    const unsigned* b;
    const float* c;
    float* d;
};

// D = A·B + C for one warp, each lane's registers placed by the PTX ISA's fragment layouts
// ("Matrix Fragments for mma.m16n8k8" and "... mma.m16n8k16 with floating point type"), with
// groupID = lane >> 2 and threadID_in_group = lane % 4. Products are exact and the K products
// and C are summed in double and rounded once to float (the hardware's own summation may
// differ in the last bits; NaN and infinity propagate as in IEEE arithmetic).
template <int K, double (*Element)(unsigned)>
CUDECONV_EMU_UNTRACED inline std::string mma_m16n8(Worker& w, Fiber* const* lanes) {
    CUDECONV_EMU_TRACE_POINT(w, trace::count_mma(w.trace, lanes[0]->warp_operation_name));
    double a[16][K], b[K][8], acc[16][8];
    for (unsigned lane = 0; lane < 32; ++lane) {
        const MmaOperands& op = *static_cast<const MmaOperands*>(lanes[lane]->warp_operands);
        const unsigned group = lane >> 2, thread_in_group = lane % 4;
        if constexpr (K == 8) {  // .tf32: one element per register
            a[group][thread_in_group] = Element(op.a[0]);
            a[group + 8][thread_in_group] = Element(op.a[1]);
            a[group][thread_in_group + 4] = Element(op.a[2]);
            a[group + 8][thread_in_group + 4] = Element(op.a[3]);
            b[thread_in_group][group] = Element(op.b[0]);
            b[thread_in_group + 4][group] = Element(op.b[1]);
        } else {  // .f16/.bf16: two elements per register, the lower-numbered one in the low half
            for (unsigned r = 0; r < 4; ++r) {
                const unsigned row = group + (r & 1u) * 8, col = thread_in_group * 2 + (r >> 1) * 8;
                a[row][col] = Element(op.a[r] & 0xffffu);
                a[row][col + 1] = Element(op.a[r] >> 16);
            }
            for (unsigned r = 0; r < 2; ++r) {
                const unsigned row = thread_in_group * 2 + r * 8;
                b[row][group] = Element(op.b[r] & 0xffffu);
                b[row + 1][group] = Element(op.b[r] >> 16);
            }
        }
        for (unsigned i = 0; i < 4; ++i) acc[group + (i >> 1) * 8][thread_in_group * 2 + (i & 1u)] = op.c[i];
    }
    for (unsigned m = 0; m < 16; ++m)
        for (unsigned n = 0; n < 8; ++n)
            for (unsigned k = 0; k < K; ++k) acc[m][n] += a[m][k] * b[k][n];
    for (unsigned lane = 0; lane < 32; ++lane) {  // after every lane's C was read: d may alias c
        const MmaOperands& op = *static_cast<const MmaOperands*>(lanes[lane]->warp_operands);
        for (unsigned i = 0; i < 4; ++i)
            op.d[i] = static_cast<float>(acc[(lane >> 2) + (i >> 1) * 8][(lane % 4) * 2 + (i & 1u)]);
    }
    return {};
}

inline void mma_m16n8k8_tf32(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    MmaOperands op{a, b, c, d};
    warp_operation(&mma_m16n8<8, tf32_operand>, "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", &op);
}
inline void mma_m16n8k16_f16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    MmaOperands op{a, b, c, d};
    warp_operation(&mma_m16n8<16, half_bits_to_double>, "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", &op);
}
inline void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    MmaOperands op{a, b, c, d};
    warp_operation(&mma_m16n8<16, bfloat16_bits_to_double>, "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
                   &op);
}

// ---- ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16
struct LdmatrixOperands {
    const void* row_address;
    unsigned* out;
    const void* pc;  // where the warp's lane 0 called it (traced builds)
};

// Matrix i (i < Count) has its 8 rows of 8 b16 elements at the addresses of lanes 8i..8i+7
// (16 bytes each, 16-byte aligned, in shared memory). Lane t receives in out[i] the elements
// (row t/4, columns 2(t%4) and 2(t%4)+1), or with .trans (rows 2(t%4) and 2(t%4)+1, column t/4);
// the first of the pair in the low half. Addresses of lanes past 8·Count are not used.
template <int Count, bool Transposed>
CUDECONV_EMU_UNTRACED inline std::string ldmatrix(Worker& w, Fiber* const* lanes) {
    uint16_t matrices[Count][8][8];
    const void* rows[8 * Count];
    for (unsigned lane = 0; lane < 8u * Count; ++lane) {
        const void* address = static_cast<const LdmatrixOperands*>(lanes[lane]->warp_operands)->row_address;
        if (!in_shared_memory(w, address, 16))
            return "lane " + std::to_string(lane) + "'s row address " + pointer_text(address) +
                   " is not 16 bytes inside the block's shared memory";
        if (reinterpret_cast<uintptr_t>(address) % 16 != 0)
            return "lane " + std::to_string(lane) + "'s row address " + pointer_text(address) + " is not 16-byte aligned";
        std::memcpy(matrices[lane / 8][lane % 8], address, 16);
        rows[lane] = address;
    }
    CUDECONV_EMU_TRACE_POINT(w, trace::ldmatrix_rows(w.trace, lanes[0]->linear_idx / kWarpSize, rows, 8 * Count,
                                                     static_cast<const LdmatrixOperands*>(lanes[0]->warp_operands)->pc));
    for (unsigned lane = 0; lane < 32; ++lane) {
        unsigned* out = static_cast<const LdmatrixOperands*>(lanes[lane]->warp_operands)->out;
        const unsigned row = lane / 4, col = 2 * (lane % 4);
        for (unsigned i = 0; i < Count; ++i) {
            const auto& m = matrices[i];
            out[i] = Transposed ? (m[col][row] | static_cast<unsigned>(m[col + 1][row]) << 16)
                                : (m[row][col] | static_cast<unsigned>(m[row][col + 1]) << 16);
        }
    }
    return {};
}

template <int Count, bool Transposed>
CUDECONV_EMU_UNTRACED_CALL inline void ldmatrix_sync(unsigned* out, const void* row_address) {
    static const std::string name = std::string("ldmatrix.sync.aligned.m8n8.x") + std::to_string(Count) +
                                    (Transposed ? ".trans" : "") + ".shared.b16";
    LdmatrixOperands op{row_address, out, __builtin_return_address(0)};
    warp_operation(&ldmatrix<Count, Transposed>, name.c_str(), &op);
}

// ---- cp.async.{ca,cg}.shared.global, commit_group, wait_group, wait_all
// The source is read at issue; the destination reads as poison (0xff bytes: NaN) until the
// cp.async.wait_group that covers the copy, where the bytes land. Copies of a thread that exits
// land as it exits. (site_file, site_line) is the call in the kernel source (mma.cuh passes it).
template <unsigned Size>
CUDECONV_EMU_UNTRACED_CALL inline void cp_async(void* shared_destination, const void* global_source, int source_bytes,
                                                const char* site_file, int site_line) {
    const Worker& w = current_worker();
    // the message is built only on failure: this is the hot path of every GEMM slice
    const auto fail = [&](const std::string& problem) {
        abort_launch("cp.async of " + std::to_string(Size) + " bytes (" + where_am_i() + "): " + problem);
    };
    if (source_bytes < 0 || source_bytes > static_cast<int>(Size))
        fail("src-size " + std::to_string(source_bytes) + " is not in [0, " + std::to_string(Size) + "]");
    if (!in_shared_memory(w, shared_destination, Size))
        fail("destination " + pointer_text(shared_destination) + " is not inside the block's shared memory");
    if (reinterpret_cast<uintptr_t>(shared_destination) % Size || reinterpret_cast<uintptr_t>(global_source) % Size)
        fail("source " + pointer_text(global_source) + " and destination " + pointer_text(shared_destination) +
             " must be aligned to the copy size");
    Fiber& f = current_fiber();
    PendingCopy copy{static_cast<unsigned char*>(shared_destination), Size, f.committed_copy_groups,
                     __builtin_return_address(0), {}};
    if (source_bytes > 0) std::memcpy(copy.bytes, global_source, static_cast<size_t>(source_bytes));
    std::memset(shared_destination, 0xff, Size);
    CUDECONV_EMU_TRACE_POINT(w, trace::issue_copy(w.trace, global_source, static_cast<unsigned>(source_bytes),
                                                  shared_destination, Size, copy.pc, site_file, site_line));
    f.pending_copies.push_back(copy);
}
inline void cp_async_commit() { ++current_fiber().committed_copy_groups; }

// ---- ld.shared of Size bytes as one access (vector loads: one request of Size-byte lanes for the
// profile's bank passes; the race detector checks the whole range)
template <unsigned Size>
CUDECONV_EMU_UNTRACED_CALL inline void load_shared(void* to, const void* from) {
    const Worker& w = current_worker();
    if (!in_shared_memory(w, from, Size) || reinterpret_cast<uintptr_t>(from) % Size)
        abort_launch("ld.shared of " + std::to_string(Size) + " bytes (" + where_am_i() + "): " + pointer_text(from) +
                     " is not an aligned address inside the block's shared memory");
    std::memcpy(to, from, Size);
    CUDECONV_EMU_TRACE_POINT(w, trace::shared_load(w.trace, from, Size, __builtin_return_address(0)));
}
// Waits until at most `newest_pending` of the most recent commit groups are still in flight.
inline void cp_async_wait_group(unsigned newest_pending) {
    Fiber& f = current_fiber();
    if (f.committed_copy_groups > newest_pending) complete_copies(f, f.committed_copy_groups - newest_pending);
}
// cp.async.wait_all: commits the open group and waits for every group.
inline void cp_async_wait_all() {
    cp_async_commit();
    cp_async_wait_group(0);
}

}  // namespace cudeconv_emu

#endif  // CUDECONV_EMU_H
