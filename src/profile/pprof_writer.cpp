// Go: runtime/pprof protomem.go (writeHeapProto, scaleHeapSample), proto.go (profileBuilder,
// parseProcSelfMaps), protobuf.go (the encoder). The heap profile as the gzipped profile.proto
// that Go's pprof.WriteHeapProfile writes, field for field and in Go's order, so that
// `go tool pprof` and google/pprof read it as they read Go's.
#include "profile/pprof_writer.hpp"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <tuple>
#include <unordered_map>

#include "profile/symbolizer.hpp"

namespace gofin::internal::profile {

namespace {

// Go: proto.go's field numbers, from pprof's profile.proto.
enum Tag : int {
  // message Profile
  kProfileSampleType = 1,  // repeated ValueType
  kProfileSample = 2,      // repeated Sample
  kProfileMapping = 3,     // repeated Mapping
  kProfileLocation = 4,    // repeated Location
  kProfileFunction = 5,    // repeated Function
  kProfileStringTable = 6,
  kProfileTimeNanos = 9,
  kProfilePeriodType = 11,
  kProfilePeriod = 12,
  kProfileDefaultSampleType = 14,
  // message ValueType
  kValueTypeType = 1,
  kValueTypeUnit = 2,
  // message Sample
  kSampleLocation = 1,
  kSampleValue = 2,
  kSampleLabel = 3,
  // message Label
  kLabelKey = 1,
  kLabelStr = 2,
  kLabelNum = 3,
  // message Mapping
  kMappingId = 1,
  kMappingStart = 2,
  kMappingLimit = 3,
  kMappingOffset = 4,
  kMappingFilename = 5,
  kMappingBuildId = 6,
  kMappingHasFunctions = 7,
  // message Location
  kLocationId = 1,
  kLocationMappingId = 2,
  kLocationAddress = 3,
  kLocationLine = 4,
  // message Line
  kLineFunctionId = 1,
  kLineLine = 2,
  // message Function
  kFunctionId = 1,
  kFunctionName = 2,
  kFunctionSystemName = 3,
  kFunctionFilename = 4,
  kFunctionStartLine = 5,
};

// Go: protobuf. Only the wire types profile.proto uses: varints and length-delimited fields.
// Go writes a nested message in place and shifts it to make room for its length; encoding it
// into its own buffer and appending gives the same bytes.
class ProtoEncoder {
 public:
  void Varint(std::uint64_t x) {
    for (; x >= 0x80; x >>= 7) data_.push_back(static_cast<char>((x & 0x7f) | 0x80));
    data_.push_back(static_cast<char>(x));
  }
  void Uint64(int tag, std::uint64_t x) {
    Varint(static_cast<std::uint64_t>(tag) << 3 | 0);
    Varint(x);
  }
  void Uint64Opt(int tag, std::uint64_t x) {
    if (x != 0) Uint64(tag, x);
  }
  void Int64(int tag, std::int64_t x) { Uint64(tag, static_cast<std::uint64_t>(x)); }
  void Int64Opt(int tag, std::int64_t x) {
    if (x != 0) Int64(tag, x);
  }
  void Bool(int tag, bool x) { Uint64(tag, x ? 1 : 0); }
  // Go packs a repeated field only from three elements on, where packing is shorter.
  void Uint64s(int tag, std::span<const std::uint64_t> xs) {
    if (xs.size() > 2) {
      ProtoEncoder packed;
      for (const std::uint64_t x : xs) packed.Varint(x);
      Bytes(tag, packed.data_);
      return;
    }
    for (const std::uint64_t x : xs) Uint64(tag, x);
  }
  void Int64s(int tag, std::span<const std::int64_t> xs) {
    if (xs.size() > 2) {
      ProtoEncoder packed;
      for (const std::int64_t x : xs) packed.Varint(static_cast<std::uint64_t>(x));
      Bytes(tag, packed.data_);
      return;
    }
    for (const std::int64_t x : xs) Int64(tag, x);
  }
  void Bytes(int tag, std::string_view bytes) {
    Varint(static_cast<std::uint64_t>(tag) << 3 | 2);
    Varint(bytes.size());
    data_.append(bytes);
  }
  void Message(int tag, const ProtoEncoder& msg) { Bytes(tag, msg.data_); }

  const std::string& data() const { return data_; }

 private:
  std::string data_;
};

// Go's float64-to-int64 conversion on amd64 (CVTTSD2SQ): truncation, and the "integer
// indefinite" value for NaN and out of range, where a C++ cast would be undefined.
std::int64_t GoInt64(double x) {
  constexpr double kLimit = 9223372036854775808.0;  // 2^63
  if (!(x >= -kLimit && x < kLimit)) return std::numeric_limits<std::int64_t>::min();
  return static_cast<std::int64_t>(x);
}

// Go: the memMap entries of profileBuilder. One per executable mapping of /proc/self/maps.
struct MemMap {
  std::uintptr_t start = 0;
  std::uintptr_t end = 0;
  std::uint64_t offset = 0;
  std::string file;
  std::string build_id;
  bool main_program = false;
  bool fake = false;  // no /proc/self/maps: one entry that holds every address
  // Go: symbolizeFlag. has_functions only when every location in it has a function.
  bool lookup_tried = false;
  bool lookup_failed = false;
};

std::string ReadWholeFile(const char* path) {
  std::string data;
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return data;
  std::array<char, 16384> buf{};
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    data.append(buf.data(), static_cast<std::size_t>(n));
  }
  ::close(fd);
  return data;
}

bool ParseHex(std::string_view s, std::uint64_t& out) {
  if (s.empty() || s.size() > 16) return false;
  out = 0;
  for (const char c : s) {
    unsigned d = 0;
    if (c >= '0' && c <= '9') {
      d = static_cast<unsigned>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      d = static_cast<unsigned>(c - 'a' + 10);
    } else if (c >= 'A' && c <= 'F') {
      d = static_cast<unsigned>(c - 'A' + 10);
    } else {
      return false;
    }
    out = out << 4 | d;
  }
  return true;
}

// Go: parseProcSelfMaps, line for line: the executable mappings, file names without
// " (deleted)", and not the inode-0 nameless first part of a huge-page text mapping.
std::vector<MemMap> ParseProcSelfMaps(std::string_view data, const Symbolizer& symbolizer) {
  std::vector<MemMap> out;
  while (!data.empty()) {
    const std::size_t nl = data.find('\n');
    std::string_view line = data.substr(0, nl);
    data.remove_prefix(nl == std::string_view::npos ? data.size() : nl + 1);
    const auto next = [&line] {
      const std::size_t sp = line.find(' ');
      const std::string_view field = line.substr(0, sp);
      if (sp == std::string_view::npos) {
        line = {};
      } else {
        line.remove_prefix(sp + 1);
        line.remove_prefix(std::min(line.find_first_not_of(' '), line.size()));
      }
      return field;
    };
    const std::string_view range = next();
    const std::size_t dash = range.find('-');
    MemMap m;
    std::uint64_t lo = 0;
    std::uint64_t hi = 0;
    if (dash == std::string_view::npos || !ParseHex(range.substr(0, dash), lo) ||
        !ParseHex(range.substr(dash + 1), hi)) {
      continue;
    }
    const std::string_view perm = next();
    if (perm.size() < 4 || perm[2] != 'x') continue;  // only executable mappings
    std::uint64_t offset = 0;
    if (!ParseHex(next(), offset)) continue;
    next();  // device
    const std::string_view inode = next();
    if (line.empty()) continue;  // Go's `line == nil`: an anonymous mapping
    std::string_view file = line;
    if (file.ends_with(" (deleted)")) file.remove_suffix(std::strlen(" (deleted)"));
    if (inode == "0" && file.empty()) continue;

    m.start = lo;
    m.end = hi;
    m.offset = offset;
    m.file = file;
    const LoadedObject* obj = symbolizer.ObjectAt(lo);
    m.main_program = obj != nullptr && obj->main_program;
    // Go reads the build ID from the file by name, which "[vdso]" is not; the loader's copy
    // in memory is the one that matches what runs even if the file was replaced since.
    if (m.file.starts_with('/')) m.build_id = obj != nullptr ? obj->build_id : ElfBuildId(m.file);
    out.push_back(std::move(m));
  }
  return out;
}

// The demangled name's prefixes of gofin's allocation path, as Go hides frames of "runtime."
// and "internal/runtime/": mallocgc and its callers are the same in every sample, and would
// make every allocation site look like one. _Unwind_ is for an unwinder that reports its own
// frame first (libgcc's starts at its caller).
constexpr std::array<std::string_view, 10> kHiddenPrefixes = {
    // The allocator and collector, and the C++ API's allocating templates and functions.
    "gofin::internal::",
    "gofin::detail::",
    "gofin::New<",
    "gofin::NewArray<",
    "gofin::Alloc(",
    "gofin::AllocNoScan(",
    "gofin::Allocator<",
    // The C API (gofin_malloc_noscan too).
    "gofin_malloc",
    "gofin_realloc",
    // The unwinder.
    "_Unwind_",
};

bool IsHiddenFrame(const FunctionSymbol* fn) {
  if (fn == nullptr) return false;
  const std::string_view name = StripReturnType(fn->name);
  return std::ranges::any_of(kHiddenPrefixes,
                             [name](std::string_view p) { return name.starts_with(p); });
}

// Go: profileBuilder, for heap profiles: no CPU samples, no inlining deck (the symbol tables
// say nothing of inlining, so each address is one location with one line).
class ProfileBuilder {
 public:
  ProfileBuilder()
      : start_ns_(std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count()) {
    ReadMapping();
  }

  ProtoEncoder& pb() { return pb_; }

  // Go: stringIndex.
  std::int64_t StringIndex(std::string_view s) {
    const auto [it, inserted] = string_map_.try_emplace(std::string(s), strings_.size());
    if (inserted) strings_.emplace_back(s);
    return static_cast<std::int64_t>(it->second);
  }

  // Go: pbValueType.
  void ValueType(int tag, std::string_view type, std::string_view unit) {
    ProtoEncoder m;
    m.Int64(kValueTypeType, StringIndex(type));
    m.Int64(kValueTypeUnit, StringIndex(unit));
    pb_.Message(tag, m);
  }

  // Go: pbSample plus pbLabel for writeHeapProto's one label.
  void Sample(std::span<const std::int64_t> values, std::span<const std::uint64_t> locs,
              std::int64_t block_size) {
    ProtoEncoder m;
    m.Int64s(kSampleValue, values);
    m.Uint64s(kSampleLocation, locs);
    if (block_size != 0) {
      ProtoEncoder label;
      label.Int64Opt(kLabelKey, StringIndex("bytes"));
      label.Int64Opt(kLabelStr, StringIndex(""));
      label.Int64Opt(kLabelNum, block_size);
      m.Message(kSampleLabel, label);
    }
    pb_.Message(kProfileSample, m);
  }

  // The function holding the call instruction before a return address.
  const FunctionSymbol* Function(std::uintptr_t return_pc) {
    const auto [it, inserted] = symbols_.try_emplace(return_pc, nullptr);
    if (inserted) it->second = symbolizer_.Lookup(return_pc - 1);
    return it->second;
  }

  // Go: appendLocsForStack. Every address is a return address (or 0: none).
  void AppendLocsForStack(std::vector<std::uint64_t>& locs, std::span<const std::uintptr_t> stk) {
    for (const std::uintptr_t addr : stk) {
      if (addr != 0) locs.push_back(Location(addr));
    }
  }

  // Go: build's tail: time, mappings, strings, then the gzip stream.
  void Build(std::ostream& out) {
    pb_.Int64Opt(kProfileTimeNanos, start_ns_);
    for (std::size_t i = 0; i < mem_.size(); ++i) {
      const MemMap& m = mem_[i];
      ProtoEncoder e;
      e.Uint64Opt(kMappingId, i + 1);
      e.Uint64Opt(kMappingStart, m.start);
      e.Uint64Opt(kMappingLimit, m.end);
      e.Uint64Opt(kMappingOffset, m.offset);
      e.Int64Opt(kMappingFilename, StringIndex(m.file));
      e.Int64Opt(kMappingBuildId, StringIndex(m.build_id));
      if (m.lookup_tried && !m.lookup_failed) e.Bool(kMappingHasFunctions, true);
      pb_.Message(kProfileMapping, e);
    }
    for (const std::string& s : strings_) pb_.Bytes(kProfileStringTable, s);
    Gzip(pb_.data(), out);
  }

 private:
  // Go: readMapping (proto_other.go). The program's mappings go first, since pprof takes the
  // first mapping for the main binary (its name in reports, where it looks for symbols);
  // Go's order from /proc/self/maps has it first only because the program is mapped lowest.
  void ReadMapping() {
    mem_ = ParseProcSelfMaps(ReadWholeFile("/proc/self/maps"), symbolizer_);
    std::stable_partition(mem_.begin(), mem_.end(), [](const MemMap& m) { return m.main_program; });
    if (mem_.empty()) {  // pprof expects a mapping, so fake one
      MemMap fake;
      fake.fake = true;
      mem_.push_back(std::move(fake));
    }
  }

  // Go: emitLocation, for one return address. The location's address is that of the call
  // instruction (return address - 1), as runtime.CallersFrames gives Go's: pprof and
  // addr2line then name the line of the call, not the line after it, and the address stays
  // inside the caller when the call is its last instruction (a noreturn callee).
  std::uint64_t Location(std::uintptr_t addr) {
    if (const auto it = locs_.find(addr); it != locs_.end()) return it->second;
    const std::uintptr_t pc = addr - 1;
    const FunctionSymbol* fn = Function(addr);
    const std::uint64_t id = locs_.size() + 1;
    locs_.emplace(addr, id);

    ProtoEncoder loc;
    loc.Uint64Opt(kLocationId, id);
    loc.Uint64Opt(kLocationAddress, pc);
    bool new_function = false;
    std::uint64_t function_id = 0;
    // An address no symbol covers gets no line, as pprof's own symbolizer leaves it: pprof
    // shows it as "<unknown>" (or by address) and can still symbolize it from the mapping's
    // file. (Go's builder, for a PC outside Go's tables, writes a line naming function "".)
    if (fn != nullptr) {
      const auto [it, inserted] = funcs_.try_emplace(fn->system_name, funcs_.size() + 1);
      function_id = it->second;
      new_function = inserted;
      ProtoEncoder line;
      line.Uint64Opt(kLineFunctionId, function_id);
      loc.Message(kLocationLine, line);
    }
    for (std::size_t i = 0; i < mem_.size(); ++i) {
      MemMap& m = mem_[i];
      if ((m.start <= pc && pc < m.end) || m.fake) {
        loc.Uint64Opt(kLocationMappingId, i + 1);
        m.lookup_tried = true;
        m.lookup_failed |= fn == nullptr;
        break;
      }
    }
    pb_.Message(kProfileLocation, loc);

    if (new_function) {
      // Function.name is what reports show: the demangled name in full, which pprof keeps
      // as it is (it demangles only where name == system_name; -symbolize=demangle=...
      // redoes it from system_name).
      ProtoEncoder f;
      f.Uint64Opt(kFunctionId, function_id);
      f.Int64Opt(kFunctionName, StringIndex(fn->name));
      f.Int64Opt(kFunctionSystemName, StringIndex(fn->system_name));
      f.Int64Opt(kFunctionFilename, StringIndex(""));
      pb_.Message(kProfileFunction, f);
    }
    return id;
  }

  // Go: gzip.NewWriterLevel(w, gzip.BestSpeed). The header's OS byte is Go's "unknown"
  // (255) rather than zlib's Unix, so that the gzip header is Go's byte for byte (the
  // deflate stream is zlib's, not compress/flate's).
  static void Gzip(std::string_view data, std::ostream& out) {
    z_stream zs{};
    if (deflateInit2(&zs, Z_BEST_SPEED, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
      out.setstate(std::ios::badbit);
      return;
    }
    gz_header header{};
    header.os = 255;
    deflateSetHeader(&zs, &header);
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
    zs.avail_in = static_cast<uInt>(data.size());  // a profile is far below 4 GiB
    std::array<char, 1 << 16> buf{};
    int rc = Z_OK;
    do {
      zs.next_out = reinterpret_cast<Bytef*>(buf.data());
      zs.avail_out = static_cast<uInt>(buf.size());
      rc = deflate(&zs, Z_FINISH);
      if (rc == Z_STREAM_ERROR) break;
      out.write(buf.data(), static_cast<std::streamsize>(buf.size() - zs.avail_out));
    } while (rc != Z_STREAM_END && out);
    deflateEnd(&zs);
    if (rc != Z_STREAM_END) out.setstate(std::ios::badbit);
  }

  const std::int64_t start_ns_;
  Symbolizer symbolizer_;
  ProtoEncoder pb_;
  std::vector<std::string> strings_{""};
  std::unordered_map<std::string, std::size_t> string_map_{{"", 0}};
  std::vector<MemMap> mem_;
  std::unordered_map<std::uintptr_t, std::uint64_t> locs_;  // return address -> location ID
  std::unordered_map<std::string, std::uint64_t> funcs_;    // system name -> function ID
  std::unordered_map<std::uintptr_t, const FunctionSymbol*> symbols_;  // by return address
};

}  // namespace

std::pair<std::int64_t, std::int64_t> ScaleHeapSample(std::int64_t count, std::int64_t size,
                                                      std::int64_t rate) {
  if (count == 0 || size == 0) return {0, 0};
  if (rate <= 1) {
    // if rate==1 all samples were collected so no adjustment is needed.
    // if rate<1 treat as unknown and skip scaling.
    return {count, size};
  }
  const double avg_size = static_cast<double>(size) / static_cast<double>(count);
  const double scale = 1 / (1 - std::exp(-avg_size / static_cast<double>(rate)));
  return {GoInt64(static_cast<double>(count) * scale), GoInt64(static_cast<double>(size) * scale)};
}

void WriteHeapProto(std::ostream& out, const std::vector<MemRecord>& records, std::int64_t rate) {
  WriteHeapProto(out, records, rate, "");
}

void WriteHeapProto(std::ostream& out, const std::vector<MemRecord>& records, std::int64_t rate,
                    std::string_view default_sample_type) {
  ProfileBuilder b;
  b.ValueType(kProfilePeriodType, "space", "bytes");
  b.pb().Int64Opt(kProfilePeriod, rate);
  b.ValueType(kProfileSampleType, "alloc_objects", "count");
  b.ValueType(kProfileSampleType, "alloc_space", "bytes");
  b.ValueType(kProfileSampleType, "inuse_objects", "count");
  b.ValueType(kProfileSampleType, "inuse_space", "bytes");
  if (!default_sample_type.empty()) {
    b.pb().Int64Opt(kProfileDefaultSampleType, b.StringIndex(default_sample_type));
  }

  std::array<std::int64_t, 4> values{};
  std::vector<std::uint64_t> locs;
  for (const MemRecord& r : records) {
    // Go leaves out the leading runtime frames, unless nothing would be left.
    std::span<const std::uintptr_t> stk = r.stack;
    const auto first_shown = std::ranges::find_if_not(
        stk, [&b](std::uintptr_t addr) { return addr != 0 && IsHiddenFrame(b.Function(addr)); });
    if (first_shown != stk.end()) stk = stk.subspan(first_shown - stk.begin());
    locs.clear();
    b.AppendLocsForStack(locs, stk);
    if (locs.empty()) b.AppendLocsForStack(locs, r.stack);  // Go's second try: all frames

    std::tie(values[0], values[1]) = ScaleHeapSample(r.alloc_objects, r.alloc_bytes, rate);
    std::tie(values[2], values[3]) =
        ScaleHeapSample(r.alloc_objects - r.free_objects, r.alloc_bytes - r.free_bytes, rate);
    const std::int64_t block_size = r.alloc_objects > 0 ? r.alloc_bytes / r.alloc_objects : 0;
    b.Sample(values, locs, block_size);
  }
  b.Build(out);
}

}  // namespace gofin::internal::profile
