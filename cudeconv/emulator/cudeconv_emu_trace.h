// Interface between the emulator's scheduler (cudeconv_emu.h) and its memory tracer
// (cudeconv_emu_trace.cpp): the shared-memory race detector (racecheck) and the memory-traffic
// profile of a traced build.
//
// A traced build compiles the kernel's translation unit with GCC's ThreadSanitizer
// instrumentation (-fsanitize=thread) but links without the sanitizer's runtime: every load and
// store of kernel code calls a __tsan_* hook with its address and size, and those hooks are the
// tracer's (cudeconv_emu_trace.cpp, compiled without the flag). The scheduler's own functions
// are excluded from the instrumentation (CUDECONV_EMU_UNTRACED) and tell the tracer which kernel
// thread runs, where barriers and __syncwarp fall and what the warp collectives that run in the
// scheduler (ldmatrix, mma) and cp.async do.
//
// Only plain data and functions are shared: the two translation units are compiled with
// different flags, so no inline code is.
#ifndef CUDECONV_EMU_TRACE_H
#define CUDECONV_EMU_TRACE_H

#include <cstddef>
#include <cstdint>
#include <string>

namespace cudeconv_emu {
namespace trace {

// Launch modes, set from Python before each launch (cudeconv_emu_trace_configure).
constexpr unsigned kRacecheck = 1;
constexpr unsigned kProfile = 2;

struct Session;        // one traced launch: its settings and what its workers found
struct WorkerShadow;   // racecheck and profile state of one worker thread

// One worker OS thread of the module. The scheduler fills in which kernel thread is running;
// the hooks find it from the calling OS thread (see current_worker in the .cpp).
struct WorkerTrace {
    uintptr_t tls_begin;  // the module's thread-local storage: the block's shared memory
    size_t tls_size;
    size_t dynamic_offset;   // of the dynamic shared buffer in it
    size_t dynamic_end;      // offset past the buffer
    size_t dynamic_bytes;    // the launch's dynamic shared memory; the rest of the buffer is not shared
    size_t excluded_offset;  // the scheduler's worker pointer, which is not shared memory
    size_t excluded_size;
    Session* session;  // null outside a traced launch
    unsigned mode;     // the session's kRacecheck | kProfile
    int thread;        // linear index of the kernel thread running, -1 while the scheduler runs
    unsigned block_dim[3];
    unsigned block_idx[3];
    WorkerShadow* shadow;
};

// Registers the calling OS thread (once, when the scheduler creates its worker).
WorkerTrace* attach(unsigned char* tls_begin, unsigned char* tls_end, unsigned char* dynamic_begin,
                    unsigned char* dynamic_end, const void* excluded, size_t excluded_size);
// The traced launch about to run (null when Python configured no tracing), and its end: merges
// what the workers found; the results stay readable until the next configure.
Session* launch_begin();
void launch_end(Session* session);
void worker_begin(WorkerTrace* w, Session* session, const unsigned* block_dim, size_t dynamic_bytes);
void worker_end(WorkerTrace* w);
void block_begin(WorkerTrace* w, const unsigned* block_idx);
// Every live thread of the block is at __syncthreads (or has exited): a new interval starts.
void barrier(WorkerTrace* w);
// The block has finished. Returns false with `message` set when racecheck found a race in it;
// the message holds {pc:OFFSET} and {shared:OFFSET} fields that the Python side symbolizes.
bool block_end(WorkerTrace* w, std::string& message);
// A __syncwarp of `warp` completed: it orders that warp's lanes (all of them; see docs).
void warp_fence(WorkerTrace* w, unsigned warp);
// cp.async issued by the running thread: its global source is read now and its shared
// destination written from now until it lands (land_copy, at the wait_group that covers it).
// (site_file, site_line): the copy's call site in the kernel source.
void issue_copy(WorkerTrace* w, const void* source, unsigned source_bytes, void* destination, unsigned size,
                const void* pc, const char* site_file, int site_line);
void land_copy(WorkerTrace* w, void* destination, unsigned size, const void* pc);
// A load of `size` bytes of shared memory as one access (ld.shared.v2/v4), from the instruction at pc.
void shared_load(WorkerTrace* w, const void* address, unsigned size, const void* pc);
// ldmatrix of `warp`: row r (16 bytes) at rows[r] for r < num_rows; every lane receives data.
void ldmatrix_rows(WorkerTrace* w, unsigned warp, const void* const* rows, unsigned num_rows, const void* pc);
// One mma.sync of a warp (the profile counts them by instruction name).
void count_mma(WorkerTrace* w, const char* name);

}  // namespace trace
}  // namespace cudeconv_emu

#endif  // CUDECONV_EMU_TRACE_H
