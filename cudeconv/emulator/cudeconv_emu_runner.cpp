// main() of a sanitizer build: runs one kernel launch in a child process, so that an ASan/UBSan
// report cannot take the Python process down. Appended to the translation unit after the
// kernel source and CUDECONV_EMU_EXPORT_KERNEL lines.
//
//   runner --describe          print cudeconv_emu_describe()
//   runner REQUEST RESPONSE    run the launch described in REQUEST (written by _kernel.py),
//                              write the final contents of its array buffers to RESPONSE
//
// Array arguments are copied into exactly-sized malloc'ed buffers, so ASan knows their bounds;
// arrays that share memory share a buffer, and point into it at their offsets.

namespace cudeconv_emu_runner {

struct Reader {
    std::vector<char> data;
    size_t pos = 0;

    void take(void* out, size_t n) {
        if (pos + n > data.size()) {
            std::fprintf(stderr, "cudeconv emulator runner: truncated request\n");
            std::exit(2);
        }
        std::memcpy(out, data.data() + pos, n);
        pos += n;
    }
    template <class T>
    T get() {
        T v;
        take(&v, sizeof v);
        return v;
    }
};

std::vector<char> read_file(const char* path) {
    std::FILE* f = std::fopen(path, "rb");
    if (!f) {
        std::perror(path);
        std::exit(2);
    }
    std::vector<char> data;
    char chunk[1 << 16];
    size_t n;
    while ((n = std::fread(chunk, 1, sizeof chunk, f)) > 0) data.insert(data.end(), chunk, chunk + n);
    std::fclose(f);
    return data;
}

int run(const char* request_path, const char* response_path) {
    Reader in{read_file(request_path)};
    char magic[8];
    in.take(magic, sizeof magic);
    if (std::memcmp(magic, "CDEMREQ3", 8) != 0) {
        std::fprintf(stderr, "cudeconv emulator runner: bad request file\n");
        return 2;
    }
    std::string name(in.get<uint32_t>(), '\0');
    in.take(&name[0], name.size());
    unsigned dims[6];
    in.take(dims, sizeof dims);
    const auto shared_bytes = in.get<uint64_t>();
    const auto timeout_seconds = in.get<double>();
    const auto schedule = in.get<uint32_t>();
    const auto schedule_seed = in.get<uint64_t>();

    std::vector<std::pair<void*, uint64_t>> buffers(in.get<uint32_t>());
    for (auto& buffer : buffers) {
        buffer.second = in.get<uint64_t>();
        buffer.first = std::malloc(buffer.second);
        in.take(buffer.first, buffer.second);
    }
    const auto num_params = in.get<uint32_t>();
    std::vector<void*> pointer_values(num_params);
    std::vector<std::unique_ptr<uint64_t[]>> scalar_values;  // 8-byte aligned storage
    std::vector<void*> params(num_params);
    for (uint32_t i = 0; i < num_params; ++i) {
        if (in.get<uint32_t>() == 0) {
            const auto buffer = in.get<uint32_t>();
            pointer_values[i] = static_cast<char*>(buffers.at(buffer).first) + in.get<uint64_t>();
            params[i] = &pointer_values[i];
        } else {
            const auto size = in.get<uint32_t>();
            scalar_values.emplace_back(new uint64_t[(size + 7) / 8 + 1]);
            in.take(scalar_values.back().get(), size);
            params[i] = scalar_values.back().get();
        }
    }

    for (const auto& kernel : cudeconv_emu::kernel_registry()) {
        if (kernel.name != name) continue;
        char error[4096];
        if (kernel.launch(dims, shared_bytes, params.data(), timeout_seconds, schedule, schedule_seed, error,
                          sizeof error) != 0) {
            std::fprintf(stderr, "%s\n", error);
            return cudeconv_emu::kRunnerLaunchFailed;
        }
        std::FILE* out = std::fopen(response_path, "wb");
        if (!out) {
            std::perror(response_path);
            return 2;
        }
        for (const auto& buffer : buffers) std::fwrite(buffer.first, 1, buffer.second, out);
        std::fclose(out);
        return 0;
    }
    std::fprintf(stderr, "cudeconv emulator runner: no kernel named '%s'\n", name.c_str());
    return 2;
}

}  // namespace cudeconv_emu_runner

int main(int argc, char** argv) {
    if (argc == 2 && std::strcmp(argv[1], "--describe") == 0) {
        std::fputs(cudeconv_emu_describe(), stdout);
        return 0;
    }
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s --describe | REQUEST RESPONSE\n", argv[0]);
        return 2;
    }
    const int status = cudeconv_emu_runner::run(argv[1], argv[2]);
    std::fflush(stdout);  // kernel printf output
    return status;
}
