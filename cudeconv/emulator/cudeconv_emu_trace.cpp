// The emulator's memory tracer: the __tsan_* hooks that a traced build's kernel code calls for
// every load and store (GCC's -fsanitize=thread instrumentation, linked without its runtime),
// the shared-memory race detector and the memory-traffic profile. Compiled without the
// instrumentation and linked first, so that its copies of shared template code are the ones used.
// See cudeconv_emu_trace.h for the interface and docs/emulator.md for what is checked.
#include "cudeconv_emu_trace.h"

#include <dlfcn.h>
#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace cudeconv_emu {
namespace trace {
namespace {

// ---- settings of the next launch (set from Python) and the results of the last one ---------
struct Range {
    uintptr_t begin, end;
};
std::mutex settings_mutex;
unsigned configured_mode = 0;
std::vector<Range> configured_arguments;  // the kernel's array arguments, by parameter index order
std::string last_results;
// The source line of each cp.async call site's pc (issue_copy): the profile names a copy by the
// line that called it, which the line tables of an optimized build may place in an outer frame.
std::mutex copy_sites_mutex;
std::map<uint64_t, std::pair<std::string, int>> copy_site_lines;

// Number of traced launches running: the hooks return at once while it is zero.
std::atomic<int> active_launches{0};

// ---- which worker the calling OS thread is -------------------------------------------------
// A thread_local here would live in the module's thread-local storage, which is the blocks'
// shared memory; an OS thread is told apart by its thread pointer instead (one instruction on
// x86-64), in a small open-addressed table that only grows.
constexpr unsigned kTableSize = 1024;
struct Slot {
    std::atomic<uintptr_t> key{0};
    WorkerTrace* worker = nullptr;
};
Slot worker_table[kTableSize];
std::mutex table_mutex;

inline uintptr_t thread_pointer() {
#ifdef __x86_64__
    uintptr_t tp;
    __asm__("movq %%fs:0, %0" : "=r"(tp));
    return tp;
#else
    return static_cast<uintptr_t>(pthread_self());
#endif
}

inline unsigned table_index(uintptr_t key) { return static_cast<unsigned>((key * 0x9e3779b97f4a7c15ull) >> 54); }

inline WorkerTrace* current_worker() {
    const uintptr_t key = thread_pointer();
    for (unsigned i = table_index(key), probes = 0; probes < kTableSize; i = (i + 1) % kTableSize, ++probes) {
        const uintptr_t k = worker_table[i].key.load(std::memory_order_acquire);
        if (k == key) return worker_table[i].worker;
        if (k == 0) return nullptr;
    }
    return nullptr;
}

// ---- racecheck -----------------------------------------------------------------------------
// Per byte of shared memory: the last write and up to two reads by different threads in the
// current barrier interval. Intervals are numbered per worker, so entries from earlier intervals,
// blocks and launches are simply stale and never need clearing.
constexpr uint16_t kAtomic = 0x8000;
constexpr uint16_t kThreadBits = 0x3ff;
struct Access {
    uint64_t pc;  // offset in the module of the instruction
    uint32_t interval;
    uint16_t who;    // thread's linear index | kAtomic
    uint16_t epoch;  // its warp's __syncwarp count in the interval
};
struct Cell {
    Access write;
    Access read[2];
};
enum class RaceKind { RAW, WAR, WAW };
const char* const kRaceKindNames[] = {"RAW", "WAR", "WAW"};

struct Race {
    RaceKind kind;
    size_t offset;  // in the module's thread-local storage
    unsigned earlier_size, later_size;
    Access earlier, later;
};

// ---- profile -------------------------------------------------------------------------------
enum Kind : uint8_t { GlobalLoad, GlobalStore, CpAsync, SharedLoad, SharedStore, kNumKinds };
const char* const kKindNames[] = {"global_load", "global_store", "cp_async", "shared_load", "shared_store"};

struct Record {  // one lane's access, kept until the warp's interval is summed up
    uint64_t pc;
    uintptr_t address;
    int32_t argument;  // index into the configured arguments, -1 for shared memory
    uint16_t size;
    uint8_t lane;
    Kind kind;
};
struct Counts {
    uint64_t requests = 0, sectors = 0, bytes = 0, wavefronts = 0;
};
using CountKey = std::tuple<int, uint64_t, int>;  // kind, pc, argument

uintptr_t module_base() {
    static const uintptr_t base = [] {
        Dl_info info{};
        dladdr(reinterpret_cast<void*>(&module_base), &info);
        return reinterpret_cast<uintptr_t>(info.dli_fbase);
    }();
    return base;
}

// The offset of the instruction at a return address: the call that made the access.
inline uint64_t pc_offset(const void* return_address) {
    return reinterpret_cast<uintptr_t>(return_address) - module_base() - 1;
}

}  // namespace

struct Session {
    unsigned mode;
    std::vector<Range> arguments;
    std::mutex mutex;  // guards the merged results below
    std::map<CountKey, Counts> counts;
    std::vector<std::unordered_set<uint64_t>> sectors;  // distinct global sectors, per argument
    std::map<std::string, uint64_t> mma;
};

struct WorkerShadow {
    Cell* cells = nullptr;
    size_t num_cells = 0;
    uint32_t interval = 0;
    uint16_t warp_epoch[32] = {};
    uint64_t races = 0;
    Race first{};
    // profile
    std::vector<Record> records[32];  // per warp, in program order of each lane
    std::map<CountKey, Counts> counts;
    std::vector<std::unordered_set<uint64_t>> sectors;
    std::map<std::string, uint64_t> mma;
    // the pc standing for each cp.async call site of the source (file, line): its first call's
    std::map<std::pair<const char*, int>, uint64_t> copy_sites;
};

namespace {

void new_interval(WorkerShadow& s) {
    if (++s.interval == 0) {  // wrapped: forget everything rather than alias an old interval
        std::memset(static_cast<void*>(s.cells), 0, s.num_cells * sizeof(Cell));
        s.interval = 1;
    }
    std::fill(std::begin(s.warp_epoch), std::end(s.warp_epoch), 0);
}

// Could `earlier` and an access by `who` at `epoch` in `interval` run in either order on a GPU?
inline bool unordered(const Access& earlier, uint16_t who, uint16_t epoch, uint32_t interval) {
    if (earlier.interval != interval) return false;  // a __syncthreads between them
    if (earlier.who & who & kAtomic) return false;   // two atomics
    const unsigned a = earlier.who & kThreadBits, b = who & kThreadBits;
    if (a == b) return false;  // one thread's program order
    return a / 32 != b / 32 || earlier.epoch == epoch;  // lanes of one warp: a __syncwarp between
}

void record_race(WorkerShadow& s, RaceKind kind, size_t offset, const Access& earlier, unsigned earlier_size,
                 const Access& later, unsigned later_size, bool& reported) {
    if (reported) return;  // one count per access, however many of its bytes race
    reported = true;
    if (s.races++ == 0) s.first = Race{kind, offset, earlier_size, later_size, earlier, later};
}

void check_shared(WorkerTrace& w, size_t offset, unsigned size, bool write, bool atomic, uint64_t pc) {
    WorkerShadow& s = *w.shadow;
    const unsigned thread = static_cast<unsigned>(w.thread);
    const uint16_t who = static_cast<uint16_t>(thread | (atomic ? kAtomic : 0));
    const Access now{pc, s.interval, who, s.warp_epoch[thread / 32]};
    bool reported = false;
    for (size_t byte = offset; byte < offset + size && byte < s.num_cells; ++byte) {
        Cell& cell = s.cells[byte];
        if (unordered(cell.write, who, now.epoch, now.interval))
            record_race(s, write ? RaceKind::WAW : RaceKind::RAW, byte, cell.write, 0, now, size, reported);
        if (write) {
            for (const Access& read : cell.read)
                if (unordered(read, who, now.epoch, now.interval))
                    record_race(s, RaceKind::WAR, byte, read, 0, now, size, reported);
            cell.write = now;
            if (atomic) {  // an atomic read-modify-write also reads
                cell.read[0] = now;
                cell.read[1].interval = 0;
            }
            continue;
        }
        // Keep the reads of two different threads (with the latest epoch of each): a later
        // write by any thread differs from at least one of them.
        Access* read = cell.read;
        if (read[0].interval != now.interval) {
            read[0] = now;
            read[1].interval = 0;
        } else if ((read[0].who & kThreadBits) == thread) {
            read[0] = now;
        } else if (read[1].interval != now.interval || (read[1].who & kThreadBits) == thread) {
            read[1] = now;
        }
    }
}

// ---- profile helpers
int argument_of(const Session& session, uintptr_t address) {
    for (size_t i = 0; i < session.arguments.size(); ++i)
        if (address >= session.arguments[i].begin && address < session.arguments[i].end) return static_cast<int>(i);
    return -1;
}

void add_record(WorkerTrace& w, Kind kind, uintptr_t address, unsigned size, int argument, uint64_t pc) {
    const unsigned thread = static_cast<unsigned>(w.thread);
    w.shadow->records[thread / 32].push_back(
        Record{pc, address, argument, static_cast<uint16_t>(size), static_cast<uint8_t>(thread % 32), kind});
}

// Shared-memory bank passes of one request (Nsight Compute's wavefronts): 4-byte accesses are
// served for the whole warp at once, 8-byte ones per half warp and 16-byte ones per quarter warp
// (ldmatrix: per 8-row matrix). Within a pass, each bank serves one 4-byte word per wavefront;
// lanes reading the same word share it (broadcast).
uint64_t wavefronts(const std::vector<const Record*>& lanes) {
    unsigned widest = 0;
    for (const Record* r : lanes) widest = std::max<unsigned>(widest, r->size);
    const unsigned lanes_per_pass = widest > 8 ? 8 : widest > 4 ? 16 : 32;
    uint64_t total = 0;
    for (unsigned pass = 0; pass < 32 / lanes_per_pass; ++pass) {
        std::vector<uintptr_t> words;
        for (const Record* r : lanes) {
            if (r->lane / lanes_per_pass != pass) continue;
            for (uintptr_t word = r->address / 4; word <= (r->address + r->size - 1) / 4; ++word) words.push_back(word);
        }
        if (words.empty()) continue;
        std::sort(words.begin(), words.end());
        words.erase(std::unique(words.begin(), words.end()), words.end());
        unsigned per_bank[32] = {};
        for (uintptr_t word : words) ++per_bank[word % 32];
        total += *std::max_element(std::begin(per_bank), std::end(per_bank));
    }
    return total;
}

// Turns the warp's records of one barrier interval into requests: the lanes' k-th execution of
// one instruction (pc) since the barrier form one request. Executions count per (pc, kind): a
// cp.async records its shared store and, unless it zero-fills, its global read — a lane's k-th
// store is its k-th copy whether its neighbours read memory or not.
void summarize_warp(WorkerShadow& s, std::vector<Record>& records) {
    if (records.empty()) return;
    std::map<std::pair<uint64_t, int>, std::array<uint32_t, 32>> executions;
    std::map<std::tuple<uint64_t, uint32_t, int, int>, std::vector<const Record*>> requests;
    for (const Record& r : records) {
        auto found = executions.try_emplace({r.pc, r.kind});
        if (found.second) found.first->second.fill(0);
        const uint32_t k = found.first->second[r.lane]++;
        requests[{r.pc, k, r.kind, r.argument}].push_back(&r);
    }
    for (const auto& [key, lanes] : requests) {
        const auto [pc, k, kind, argument] = key;
        Counts& c = s.counts[CountKey{kind, pc, argument}];
        ++c.requests;
        if (kind == SharedLoad || kind == SharedStore) {
            c.wavefronts += wavefronts(lanes);
            for (const Record* r : lanes) c.bytes += r->size;
            continue;
        }
        std::vector<uint64_t> sectors;
        for (const Record* r : lanes) {
            c.bytes += r->size;
            for (uint64_t sector = r->address / 32; sector <= (r->address + r->size - 1) / 32; ++sector)
                sectors.push_back(sector);
        }
        std::sort(sectors.begin(), sectors.end());
        sectors.erase(std::unique(sectors.begin(), sectors.end()), sectors.end());
        c.sectors += sectors.size();
        s.sectors[static_cast<size_t>(argument)].insert(sectors.begin(), sectors.end());
    }
    records.clear();
}

void summarize_interval(WorkerShadow& s) {
    for (auto& warp : s.records) summarize_warp(s, warp);
}

// ---- the hooks' common path
inline void on_access(void* address, unsigned size, bool write, bool atomic, const void* return_address) {
    if (active_launches.load(std::memory_order_relaxed) == 0) return;
    WorkerTrace* w = current_worker();
    if (!w || w->thread < 0 || !w->session || size == 0) return;
    const uintptr_t a = reinterpret_cast<uintptr_t>(address);
    const size_t offset = a - w->tls_begin;
    if (offset < w->tls_size) {
        if (offset + size > w->excluded_offset && offset < w->excluded_offset + w->excluded_size) return;
        // past the launch's dynamic shared memory: out of bounds, which sanitize=True reports
        if (offset >= w->dynamic_offset + w->dynamic_bytes && offset < w->dynamic_end) return;
        if (w->mode & kRacecheck) check_shared(*w, offset, size, write, atomic, pc_offset(return_address));
        if ((w->mode & kProfile) && !atomic)
            add_record(*w, write ? SharedStore : SharedLoad, a, size, -1, pc_offset(return_address));
        return;
    }
    if (!(w->mode & kProfile) || atomic) return;
    const int argument = argument_of(*w->session, a);
    if (argument >= 0) add_record(*w, write ? GlobalStore : GlobalLoad, a, size, argument, pc_offset(return_address));
}

std::string thread_text(const WorkerTrace& w, unsigned linear) {
    const unsigned x = w.block_dim[0], y = w.block_dim[1];
    return "thread (" + std::to_string(linear % x) + "," + std::to_string(linear / x % y) + "," +
           std::to_string(linear / (x * y)) + ")";
}

std::string pc_field(uint64_t pc) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "{pc:%llx}", static_cast<unsigned long long>(pc));
    return buf;
}

}  // namespace

// ---- interface to the scheduler ------------------------------------------------------------
WorkerTrace* attach(unsigned char* tls_begin, unsigned char* tls_end, unsigned char* dynamic_begin,
                    unsigned char* dynamic_end, const void* excluded, size_t excluded_size) {
    auto* w = new WorkerTrace{};
    w->tls_begin = reinterpret_cast<uintptr_t>(tls_begin);
    w->tls_size = static_cast<size_t>(tls_end - tls_begin);
    w->dynamic_offset = static_cast<size_t>(dynamic_begin - tls_begin);
    w->dynamic_end = static_cast<size_t>(dynamic_end - tls_begin);
    w->excluded_offset = static_cast<size_t>(static_cast<const unsigned char*>(excluded) - tls_begin);
    w->excluded_size = excluded_size;
    w->thread = -1;
    w->shadow = new WorkerShadow();
    w->shadow->num_cells = w->tls_size;
    void* cells = mmap(nullptr, w->tls_size * sizeof(Cell), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (cells == MAP_FAILED) {
        std::perror("cudeconv emulator: mmap of the racecheck shadow failed");
        std::abort();
    }
    w->shadow->cells = static_cast<Cell*>(cells);  // zero: interval 0 is never current
    std::lock_guard<std::mutex> lock(table_mutex);
    const uintptr_t key = thread_pointer();
    for (unsigned i = table_index(key);; i = (i + 1) % kTableSize) {
        const uintptr_t k = worker_table[i].key.load(std::memory_order_relaxed);
        if (k == key || k == 0) {  // a thread pointer reused by a new OS thread takes the slot over
            worker_table[i].worker = w;
            worker_table[i].key.store(key, std::memory_order_release);
            return w;
        }
    }
}

Session* launch_begin() {
    std::lock_guard<std::mutex> lock(settings_mutex);
    if (!configured_mode) return nullptr;
    auto* session = new Session();
    session->mode = configured_mode;
    session->arguments = configured_arguments;
    session->sectors.resize(configured_arguments.size());
    active_launches.fetch_add(1);
    return session;
}

void launch_end(Session* session) {
    if (!session) return;
    active_launches.fetch_sub(1);
    std::string text;
    char line[160];
    for (const auto& [key, c] : session->counts) {
        std::snprintf(line, sizeof line, "C\t%s\t%llx\t%d\t%llu\t%llu\t%llu\t%llu\n", kKindNames[std::get<0>(key)],
                      static_cast<unsigned long long>(std::get<1>(key)), std::get<2>(key),
                      static_cast<unsigned long long>(c.requests), static_cast<unsigned long long>(c.sectors),
                      static_cast<unsigned long long>(c.bytes), static_cast<unsigned long long>(c.wavefronts));
        text += line;
    }
    std::unordered_set<uint64_t> all;
    for (size_t i = 0; i < session->sectors.size(); ++i) {
        std::snprintf(line, sizeof line, "S\t%zu\t%zu\n", i, session->sectors[i].size());
        text += line;
        all.insert(session->sectors[i].begin(), session->sectors[i].end());
    }
    std::snprintf(line, sizeof line, "S\t-1\t%zu\n", all.size());
    text += line;
    for (const auto& [name, count] : session->mma) text += "M\t" + name + "\t" + std::to_string(count) + "\n";
    {
        std::lock_guard<std::mutex> lock(copy_sites_mutex);
        for (const auto& [pc, site] : copy_site_lines) {
            const std::string& file = site.first;
            const size_t slash = file.find_last_of('/');
            std::snprintf(line, sizeof line, "L\t%llx\t", static_cast<unsigned long long>(pc));
            text += line + (slash == std::string::npos ? file : file.substr(slash + 1)) + "\t" +
                    std::to_string(site.second) + "\n";
        }
    }
    std::lock_guard<std::mutex> lock(settings_mutex);
    last_results = std::move(text);
    delete session;
}

void worker_begin(WorkerTrace* w, Session* session, const unsigned* block_dim, size_t dynamic_bytes) {
    w->session = session;
    w->mode = session ? session->mode : 0;
    std::copy(block_dim, block_dim + 3, w->block_dim);
    w->dynamic_bytes = dynamic_bytes;
    w->thread = -1;
    if (session) w->shadow->sectors.assign(session->arguments.size(), {});
}

void worker_end(WorkerTrace* w) {
    Session* session = w->session;
    if (!session) return;
    WorkerShadow& s = *w->shadow;
    {
        std::lock_guard<std::mutex> lock(session->mutex);
        for (const auto& [key, c] : s.counts) {
            Counts& total = session->counts[key];
            total.requests += c.requests;
            total.sectors += c.sectors;
            total.bytes += c.bytes;
            total.wavefronts += c.wavefronts;
        }
        for (size_t i = 0; i < s.sectors.size(); ++i) session->sectors[i].insert(s.sectors[i].begin(), s.sectors[i].end());
        for (const auto& [name, count] : s.mma) session->mma[name] += count;
    }
    s.counts.clear();
    s.sectors.clear();
    s.mma.clear();
    for (auto& warp : s.records) warp.clear();
    w->session = nullptr;
    w->mode = 0;
}

void block_begin(WorkerTrace* w, const unsigned* block_idx) {
    std::copy(block_idx, block_idx + 3, w->block_idx);
    w->shadow->races = 0;
    new_interval(*w->shadow);
}

void barrier(WorkerTrace* w) {
    if (w->mode & kProfile) summarize_interval(*w->shadow);
    new_interval(*w->shadow);
}

bool block_end(WorkerTrace* w, std::string& message) {
    WorkerShadow& s = *w->shadow;
    if (w->mode & kProfile) summarize_interval(s);
    if (!s.races) return true;
    const Race& r = s.first;
    const bool earlier_writes = r.kind != RaceKind::WAR, later_writes = r.kind != RaceKind::RAW;
    const auto describe = [&](const Access& a, bool writes) {
        return thread_text(*w, a.who & kThreadBits) + (a.who & kAtomic ? " (atomically)" : "") +
               (writes ? " writes it at " : " reads it at ") + pc_field(a.pc);
    };
    message = "shared-memory race (" + std::string(kRaceKindNames[static_cast<int>(r.kind)]) + ") on {shared:" +
              std::to_string(r.offset) + "} in block (" + std::to_string(w->block_idx[0]) + "," +
              std::to_string(w->block_idx[1]) + "," + std::to_string(w->block_idx[2]) + "): " +
              describe(r.earlier, earlier_writes) + ", and " + describe(r.later, later_writes) +
              ", with no __syncthreads between them" +
              ((r.earlier.who & kThreadBits) / 32 == (r.later.who & kThreadBits) / 32 ? " (nor __syncwarp: same warp)" : "") +
              " (" + std::to_string(s.races) + " racing accesses in this block)";
    return false;
}

void warp_fence(WorkerTrace* w, unsigned warp) { ++w->shadow->warp_epoch[warp]; }

void issue_copy(WorkerTrace* w, const void* source, unsigned source_bytes, void* destination, unsigned size,
                const void* pc, const char* site_file, int site_line) {
    // One call site of the source is one instruction on the GPU, whose lanes form one request; the
    // CPU compiler may have split it into several calls (e.g. one for the lanes that copy, one for
    // those that zero-fill), so the copies of a site all count under its first call's pc.
    const auto site = w->shadow->copy_sites.try_emplace({site_file, site_line}, pc_offset(pc));
    const uint64_t offset = site.first->second;
    if (site.second) {
        std::lock_guard<std::mutex> lock(copy_sites_mutex);
        copy_site_lines.try_emplace(offset, site_file, site_line);
    }
    if (w->mode & kRacecheck)  // the copy may write any time from its issue on
        check_shared(*w, reinterpret_cast<uintptr_t>(destination) - w->tls_begin, size, true, false, offset);
    if (w->mode & kProfile) {
        // the shared-memory side: the copy's store, zero-fill or not (its bank wavefronts)
        add_record(*w, SharedStore, reinterpret_cast<uintptr_t>(destination), size, -1, offset);
        if (source_bytes > 0) {
            const uintptr_t a = reinterpret_cast<uintptr_t>(source);
            const int argument = argument_of(*w->session, a);
            if (argument >= 0) add_record(*w, CpAsync, a, source_bytes, argument, offset);
        }
    }
}

void shared_load(WorkerTrace*, const void* address, unsigned size, const void* pc) {
    on_access(const_cast<void*>(address), size, false, false, pc);
}

void land_copy(WorkerTrace* w, void* destination, unsigned size, const void* pc) {
    if (w->mode & kRacecheck)
        check_shared(*w, reinterpret_cast<uintptr_t>(destination) - w->tls_begin, size, true, false, pc_offset(pc));
}

void ldmatrix_rows(WorkerTrace* w, unsigned warp, const void* const* rows, unsigned num_rows, const void* pc) {
    if (!w->mode) return;
    const uint64_t offset = pc_offset(pc);
    const int scheduler = w->thread;
    for (unsigned lane = 0; lane < num_rows; ++lane) {  // each row read by the lane that gave its address
        w->thread = static_cast<int>(warp * 32 + lane);
        const uintptr_t a = reinterpret_cast<uintptr_t>(rows[lane]);
        if (w->mode & kRacecheck) check_shared(*w, a - w->tls_begin, 16, false, false, offset);
        if (w->mode & kProfile) add_record(*w, SharedLoad, a, 16, -1, offset);
    }
    w->thread = scheduler;
}

void count_mma(WorkerTrace* w, const char* name) {
    if (w->mode & kProfile) ++w->shadow->mma[name];
}

}  // namespace trace
}  // namespace cudeconv_emu

using cudeconv_emu::trace::on_access;

// ---- Python interface ----------------------------------------------------------------------
// Mode and the array arguments' [begin, end) ranges for the next launches of this module.
extern "C" __attribute__((visibility("default"))) void cudeconv_emu_trace_configure(unsigned mode,
                                                                                   const unsigned long long* ranges,
                                                                                   unsigned num_ranges) {
    using namespace cudeconv_emu::trace;
    std::lock_guard<std::mutex> lock(settings_mutex);
    configured_mode = mode;
    configured_arguments.clear();
    for (unsigned i = 0; i < num_ranges; ++i) configured_arguments.push_back(Range{ranges[2 * i], ranges[2 * i + 1]});
    last_results.clear();
}

// What the last traced launch's profile counted, one line per entry (see _profile.py).
extern "C" __attribute__((visibility("default"))) const char* cudeconv_emu_trace_results() {
    return cudeconv_emu::trace::last_results.c_str();
}

// ---- the __tsan_* hooks --------------------------------------------------------------------
#define CUDECONV_EMU_HOOK __attribute__((visibility("hidden"), noinline))
#define CUDECONV_EMU_ACCESS_HOOKS(N)                                                                                 \
    extern "C" CUDECONV_EMU_HOOK void __tsan_read##N(void* a) { on_access(a, N, false, false, __builtin_return_address(0)); } \
    extern "C" CUDECONV_EMU_HOOK void __tsan_write##N(void* a) { on_access(a, N, true, false, __builtin_return_address(0)); } \
    extern "C" CUDECONV_EMU_HOOK void __tsan_unaligned_read##N(void* a) {                                           \
        on_access(a, N, false, false, __builtin_return_address(0));                                                  \
    }                                                                                                                \
    extern "C" CUDECONV_EMU_HOOK void __tsan_unaligned_write##N(void* a) {                                          \
        on_access(a, N, true, false, __builtin_return_address(0));                                                   \
    }                                                                                                                \
    extern "C" CUDECONV_EMU_HOOK void __tsan_volatile_read##N(void* a) {                                            \
        on_access(a, N, false, false, __builtin_return_address(0));                                                  \
    }                                                                                                                \
    extern "C" CUDECONV_EMU_HOOK void __tsan_volatile_write##N(void* a) {                                           \
        on_access(a, N, true, false, __builtin_return_address(0));                                                   \
    }
CUDECONV_EMU_ACCESS_HOOKS(1)
CUDECONV_EMU_ACCESS_HOOKS(2)
CUDECONV_EMU_ACCESS_HOOKS(4)
CUDECONV_EMU_ACCESS_HOOKS(8)
CUDECONV_EMU_ACCESS_HOOKS(16)
#undef CUDECONV_EMU_ACCESS_HOOKS

extern "C" CUDECONV_EMU_HOOK void __tsan_read_range(void* a, unsigned long size) {
    on_access(a, static_cast<unsigned>(size), false, false, __builtin_return_address(0));
}
extern "C" CUDECONV_EMU_HOOK void __tsan_write_range(void* a, unsigned long size) {
    on_access(a, static_cast<unsigned>(size), true, false, __builtin_return_address(0));
}
extern "C" CUDECONV_EMU_HOOK void __tsan_init() {}
extern "C" CUDECONV_EMU_HOOK void __tsan_func_entry(void*) {}
extern "C" CUDECONV_EMU_HOOK void __tsan_func_exit() {}
extern "C" CUDECONV_EMU_HOOK void __tsan_vptr_update(void**, void*) {}
extern "C" CUDECONV_EMU_HOOK void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
extern "C" CUDECONV_EMU_HOOK void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

// Atomics: the hook performs the operation (sequentially consistent, at least as strong as
// asked) and records it as an atomic access, which races only with plain accesses.
#define CUDECONV_EMU_ATOMIC_HOOKS(BITS, T)                                                                           \
    extern "C" CUDECONV_EMU_HOOK T __tsan_atomic##BITS##_load(const volatile T* a, int) {                            \
        on_access(const_cast<T*>(a), sizeof(T), false, true, __builtin_return_address(0));                           \
        return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                                 \
    }                                                                                                                \
    extern "C" CUDECONV_EMU_HOOK void __tsan_atomic##BITS##_store(volatile T* a, T v, int) {                         \
        on_access(const_cast<T*>(a), sizeof(T), true, true, __builtin_return_address(0));                            \
        __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                                    \
    }                                                                                                                \
    CUDECONV_EMU_ATOMIC_RMW(BITS, T, exchange, __atomic_exchange_n)                                                  \
    CUDECONV_EMU_ATOMIC_RMW(BITS, T, fetch_add, __atomic_fetch_add)                                                  \
    CUDECONV_EMU_ATOMIC_RMW(BITS, T, fetch_sub, __atomic_fetch_sub)                                                  \
    CUDECONV_EMU_ATOMIC_RMW(BITS, T, fetch_and, __atomic_fetch_and)                                                  \
    CUDECONV_EMU_ATOMIC_RMW(BITS, T, fetch_or, __atomic_fetch_or)                                                    \
    CUDECONV_EMU_ATOMIC_RMW(BITS, T, fetch_xor, __atomic_fetch_xor)                                                  \
    CUDECONV_EMU_ATOMIC_RMW(BITS, T, fetch_nand, __atomic_fetch_nand)                                                \
    extern "C" CUDECONV_EMU_HOOK bool __tsan_atomic##BITS##_compare_exchange_strong(volatile T* a, T* expected, T v, \
                                                                                     int, int) {                     \
        on_access(const_cast<T*>(a), sizeof(T), true, true, __builtin_return_address(0));                            \
        return __atomic_compare_exchange_n(a, expected, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);               \
    }                                                                                                                \
    extern "C" CUDECONV_EMU_HOOK bool __tsan_atomic##BITS##_compare_exchange_weak(volatile T* a, T* expected, T v,   \
                                                                                   int, int) {                       \
        on_access(const_cast<T*>(a), sizeof(T), true, true, __builtin_return_address(0));                            \
        return __atomic_compare_exchange_n(a, expected, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);               \
    }                                                                                                                \
    extern "C" CUDECONV_EMU_HOOK T __tsan_atomic##BITS##_compare_exchange_val(volatile T* a, T expected, T v, int,   \
                                                                               int) {                                \
        on_access(const_cast<T*>(a), sizeof(T), true, true, __builtin_return_address(0));                            \
        __atomic_compare_exchange_n(a, &expected, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                     \
        return expected;                                                                                             \
    }
#define CUDECONV_EMU_ATOMIC_RMW(BITS, T, NAME, BUILTIN)                                                              \
    extern "C" CUDECONV_EMU_HOOK T __tsan_atomic##BITS##_##NAME(volatile T* a, T v, int) {                           \
        on_access(const_cast<T*>(a), sizeof(T), true, true, __builtin_return_address(0));                            \
        return BUILTIN(a, v, __ATOMIC_SEQ_CST);                                                                      \
    }
CUDECONV_EMU_ATOMIC_HOOKS(8, uint8_t)
CUDECONV_EMU_ATOMIC_HOOKS(16, uint16_t)
CUDECONV_EMU_ATOMIC_HOOKS(32, uint32_t)
CUDECONV_EMU_ATOMIC_HOOKS(64, uint64_t)
#undef CUDECONV_EMU_ATOMIC_HOOKS
#undef CUDECONV_EMU_ATOMIC_RMW
