// The heap profile's writer (Go: runtime/pprof protomem.go): records built by hand with real
// return addresses in this binary, written, then read back twice: by a protobuf reader here
// (after gunzip) and by `go tool pprof` when Go is on the PATH.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>
#include <unwind.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <gofin/alloc.hpp>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "heap/malloc.hpp"
#include "profile/pprof_writer.hpp"
#include "profile/symbolizer.hpp"

namespace gofin_test {

// Real return addresses, as the unwinder gives them: LeafSite stands for the function that
// allocates, CallerSite for its caller. `asm volatile` after each call keeps it from being a
// tail call (whose return address would be in the caller's caller).
struct Frames {
  std::uintptr_t leaf = 0;    // in LeafSite, after its call
  std::uintptr_t caller = 0;  // in CallerSite, after its call of LeafSite
};

[[gnu::noinline]] std::uintptr_t ReturnAddress() {
  return reinterpret_cast<std::uintptr_t>(__builtin_return_address(0));
}

[[gnu::noinline]] Frames LeafSite() {
  Frames f;
  f.leaf = ReturnAddress();
  asm volatile("" ::: "memory");
  f.caller = reinterpret_cast<std::uintptr_t>(__builtin_return_address(0));
  return f;
}

[[gnu::noinline]] Frames CallerSite() {
  Frames f = LeafSite();
  asm volatile("" ::: "memory");
  return f;
}

[[gnu::noinline]] Frames OtherLeafSite() {
  Frames f;
  f.leaf = ReturnAddress();
  asm volatile("" ::: "memory");
  f.caller = reinterpret_cast<std::uintptr_t>(__builtin_return_address(0));
  return f;
}

[[gnu::noinline]] Frames OtherCallerSite() {
  Frames f = OtherLeafSite();
  asm volatile("" ::: "memory");
  return f;
}

// A stack as gofin's sampler takes it: _Unwind_Backtrace's return addresses, its own frame
// first.
[[gnu::noinline]] std::vector<std::uintptr_t> UnwindStack() {
  std::vector<std::uintptr_t> pcs;
  _Unwind_Backtrace(
      [](_Unwind_Context* ctx, void* arg) {
        const std::uintptr_t ip = _Unwind_GetIP(ctx);
        if (ip == 0) return _URC_END_OF_STACK;
        static_cast<std::vector<std::uintptr_t>*>(arg)->push_back(ip);
        return _URC_NO_REASON;
      },
      &pcs);
  asm volatile("" ::: "memory");
  return pcs;
}

[[gnu::noinline]] std::vector<std::uintptr_t> UnwoundSite() {
  std::vector<std::uintptr_t> pcs = UnwindStack();
  asm volatile("" ::: "memory");
  return pcs;
}

namespace {

using gofin::internal::profile::MemRecord;

// ---------------------------------------------------------------------------------------------
// A minimal reader of profile.proto (only what the writer uses: varints and length-delimited).

struct PbField {
  std::uint32_t number = 0;
  std::uint32_t wire = 0;
  std::uint64_t varint = 0;
  std::string_view bytes;
};

bool ReadVarint(std::string_view& in, std::uint64_t& out) {
  out = 0;
  for (int shift = 0; shift < 64 && !in.empty(); shift += 7) {
    const auto b = static_cast<unsigned char>(in.front());
    in.remove_prefix(1);
    out |= static_cast<std::uint64_t>(b & 0x7f) << shift;
    if ((b & 0x80) == 0) return true;
  }
  return false;
}

std::vector<PbField> ParseFields(std::string_view in) {
  std::vector<PbField> out;
  while (!in.empty()) {
    std::uint64_t key;
    if (!ReadVarint(in, key)) {
      ADD_FAILURE() << "truncated key";
      break;
    }
    PbField f;
    f.number = static_cast<std::uint32_t>(key >> 3);
    f.wire = static_cast<std::uint32_t>(key & 7);
    if (f.wire == 0) {
      if (!ReadVarint(in, f.varint)) ADD_FAILURE() << "truncated varint";
    } else if (f.wire == 2) {
      std::uint64_t len = 0;
      if (!ReadVarint(in, len) || len > in.size()) {
        ADD_FAILURE() << "truncated length-delimited field";
        break;
      }
      f.bytes = in.substr(0, len);
      in.remove_prefix(len);
    } else {
      ADD_FAILURE() << "unexpected wire type " << f.wire;
      break;
    }
    out.push_back(f);
  }
  return out;
}

// A repeated varint field, packed or not (Go packs only from three elements on).
std::vector<std::uint64_t> Repeated(const std::vector<PbField>& fields, std::uint32_t number) {
  std::vector<std::uint64_t> out;
  for (const PbField& f : fields) {
    if (f.number != number) continue;
    if (f.wire == 0) {
      out.push_back(f.varint);
    } else {
      std::string_view in = f.bytes;
      std::uint64_t v;
      while (!in.empty() && ReadVarint(in, v)) out.push_back(v);
    }
  }
  return out;
}

std::uint64_t Scalar(const std::vector<PbField>& fields, std::uint32_t number) {
  std::uint64_t v = 0;
  for (const PbField& f : fields) {
    if (f.number == number && f.wire == 0) v = f.varint;
  }
  return v;
}

struct Profile {
  struct ValueType {
    std::string type, unit;
  };
  struct Label {
    std::string key, str;
    std::int64_t num = 0;
  };
  struct Sample {
    std::vector<std::uint64_t> locations;
    std::vector<std::int64_t> values;
    std::vector<Label> labels;
  };
  struct Mapping {
    std::uint64_t id = 0, start = 0, limit = 0, offset = 0;
    std::string filename, build_id;
    bool has_functions = false;
  };
  struct Location {
    std::uint64_t id = 0, mapping_id = 0, address = 0;
    std::vector<std::uint64_t> function_ids;  // one per Line
  };
  struct Function {
    std::uint64_t id = 0;
    std::string name, system_name, filename;
  };

  std::vector<ValueType> sample_types;
  std::vector<Sample> samples;
  std::vector<Mapping> mappings;
  std::vector<Location> locations;
  std::vector<Function> functions;
  std::vector<std::string> strings;
  ValueType period_type;
  std::int64_t period = 0;
  std::int64_t time_nanos = 0;
  std::string default_sample_type;

  const Location* FindLocation(std::uint64_t id) const {
    for (const Location& l : locations) {
      if (l.id == id) return &l;
    }
    return nullptr;
  }
  const Function* FindFunction(std::uint64_t id) const {
    for (const Function& f : functions) {
      if (f.id == id) return &f;
    }
    return nullptr;
  }
  // The function name of a location; "" when it has no line.
  std::string LocationName(std::uint64_t id) const {
    const Location* l = FindLocation(id);
    if (l == nullptr || l->function_ids.empty()) return "";
    const Function* f = FindFunction(l->function_ids.front());
    return f != nullptr ? f->name : "<bad function id>";
  }
  std::vector<std::string> StackNames(const Sample& s) const {
    std::vector<std::string> out;
    for (const std::uint64_t id : s.locations) out.push_back(LocationName(id));
    return out;
  }
};

std::string Gunzip(const std::string& gz) {
  z_stream zs{};
  EXPECT_EQ(inflateInit2(&zs, 15 + 16), Z_OK);
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(gz.data()));
  zs.avail_in = static_cast<uInt>(gz.size());
  std::string out;
  std::array<char, 65536> buf;
  int rc;
  do {
    zs.next_out = reinterpret_cast<Bytef*>(buf.data());
    zs.avail_out = buf.size();
    rc = inflate(&zs, Z_NO_FLUSH);
    out.append(buf.data(), buf.size() - zs.avail_out);
  } while (rc == Z_OK);
  EXPECT_EQ(rc, Z_STREAM_END) << "not a complete gzip stream";
  EXPECT_EQ(zs.avail_in, 0U) << "bytes after the gzip stream";
  inflateEnd(&zs);
  return out;
}

Profile Decode(const std::string& gz) {
  const std::string raw = Gunzip(gz);
  const std::vector<PbField> top = ParseFields(raw);
  Profile p;
  for (const PbField& f : top) {
    if (f.number == 6) p.strings.emplace_back(f.bytes);
  }
  const auto str = [&p](std::uint64_t i) -> std::string {
    if (i >= p.strings.size()) {
      ADD_FAILURE() << "string index " << i << " out of range";
      return "";
    }
    return p.strings[i];
  };
  const auto value_type = [&str](std::string_view bytes) {
    const auto fs = ParseFields(bytes);
    return Profile::ValueType{str(Scalar(fs, 1)), str(Scalar(fs, 2))};
  };
  for (const PbField& f : top) {
    switch (f.number) {
      case 1:
        p.sample_types.push_back(value_type(f.bytes));
        break;
      case 2: {
        const auto fs = ParseFields(f.bytes);
        Profile::Sample s;
        s.locations = Repeated(fs, 1);
        for (const std::uint64_t v : Repeated(fs, 2))
          s.values.push_back(static_cast<std::int64_t>(v));
        for (const PbField& lf : fs) {
          if (lf.number != 3) continue;
          const auto ls = ParseFields(lf.bytes);
          s.labels.push_back(
              {str(Scalar(ls, 1)), str(Scalar(ls, 2)), static_cast<std::int64_t>(Scalar(ls, 3))});
        }
        p.samples.push_back(std::move(s));
        break;
      }
      case 3: {
        const auto fs = ParseFields(f.bytes);
        p.mappings.push_back({Scalar(fs, 1), Scalar(fs, 2), Scalar(fs, 3), Scalar(fs, 4),
                              str(Scalar(fs, 5)), str(Scalar(fs, 6)), Scalar(fs, 7) != 0});
        break;
      }
      case 4: {
        const auto fs = ParseFields(f.bytes);
        Profile::Location l{Scalar(fs, 1), Scalar(fs, 2), Scalar(fs, 3), {}};
        for (const PbField& lf : fs) {
          if (lf.number == 4) l.function_ids.push_back(Scalar(ParseFields(lf.bytes), 1));
        }
        p.locations.push_back(std::move(l));
        break;
      }
      case 5: {
        const auto fs = ParseFields(f.bytes);
        p.functions.push_back(
            {Scalar(fs, 1), str(Scalar(fs, 2)), str(Scalar(fs, 3)), str(Scalar(fs, 4))});
        break;
      }
      case 9:
        p.time_nanos = static_cast<std::int64_t>(f.varint);
        break;
      case 11:
        p.period_type = value_type(f.bytes);
        break;
      case 12:
        p.period = static_cast<std::int64_t>(f.varint);
        break;
      case 14:
        p.default_sample_type = str(f.varint);
        break;
      default:
        break;
    }
  }
  return p;
}

bool HaveGo() { return std::system("go version >/dev/null 2>&1") == 0; }

std::string RunCommand(const std::string& cmd) {
  std::string out;
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(::popen((cmd + " 2>&1").c_str(), "r"), &::pclose);
  if (pipe == nullptr) return out;
  std::array<char, 4096> buf;
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe.get())) > 0) out.append(buf.data(), n);
  return out;
}

// ---------------------------------------------------------------------------------------------
// The records.

// The address of a function as a return address that points just past its first byte: its
// "call instruction" (return address - 1) is then the function's entry.
template <typename F>
std::uintptr_t Into(F* fn) {
  return reinterpret_cast<std::uintptr_t>(fn) + 1;
}

struct Fixture {
  Frames site = CallerSite();
  Frames other = OtherCallerSite();
  std::uintptr_t find_object = Into(&gofin::internal::FindObject);
  std::uintptr_t new_int = Into(static_cast<int* (*)()>(&gofin::New<int>));
  std::uintptr_t unwind = Into(&_Unwind_Backtrace);
  // getpid: a libc function no sanitizer runtime intercepts (TSan's defines its own abort).
  std::uintptr_t libc_fn = Into(&::getpid);
  // An address in no loaded object: a page mapped for it, never touched.
  std::unique_ptr<void, void (*)(void*)> page{
      ::mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
      [](void* p) { ::munmap(p, 4096); }};
  std::uintptr_t unknown = reinterpret_cast<std::uintptr_t>(page.get()) + 64;

  std::vector<MemRecord> Records() const {
    return {
        // gofin's frames (FindObject, New<int>) first, as the unwinder gives them.
        {40960, 16384, 10, 4, {find_object, new_int, site.leaf, site.caller, libc_fn}},
        // The unwinder's own frame before gofin's.
        {3145728, 0, 3, 0, {unwind, find_object, other.leaf, other.caller}},
        // Nothing but gofin's frames: Go then shows them all.
        {1600, 1600, 100, 100, {find_object, new_int}},
        // An address no object holds: a location without a line or mapping.
        {100000, 0, 1, 0, {find_object, site.leaf, unknown}},
        // Nothing allocated: zero values and no "bytes" label.
        {0, 0, 0, 0, {site.leaf}},
    };
  }
};

std::string Write(const std::vector<MemRecord>& records, std::int64_t rate,
                  std::string_view default_sample_type = "") {
  std::ostringstream out;
  if (default_sample_type.empty()) {
    gofin::internal::profile::WriteHeapProto(out, records, rate);
  } else {
    gofin::internal::profile::WriteHeapProto(out, records, rate, default_sample_type);
  }
  EXPECT_TRUE(out.good());
  return out.str();
}

// A GNU build ID as Go prints it: lower-case hex, 20 bytes from GNU ld, at least 8 from any.
bool IsBuildId(const std::string& s) {
  return s.size() >= 16 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

std::string SelfExe() {
  std::array<char, 4096> buf{};
  const ssize_t n = ::readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  return n > 0 ? std::string(buf.data(), static_cast<std::size_t>(n)) : "";
}

// ---------------------------------------------------------------------------------------------

TEST(PprofWriter, ScaleHeapSampleMatchesGo) {
  // {count, size, rate, Go's count, Go's size}: printed by Go 1.26's scaleHeapSample.
  struct Case {
    std::int64_t count, size, rate, want_count, want_size;
  };
  constexpr Case kCases[] = {
      {10, 40960, 524288, 1285, 5263386},
      {6, 24576, 524288, 771, 3158031},
      {3, 3145728, 524288, 3, 3638089},
      {100, 1600, 524288, 3276850, 52429600},
      {1, 100000, 524288, 5, 575876},
      {0, 0, 524288, 0, 0},
      {1, 16, 524288, 32768, 524296},
      {7, 3670016, 524288, 11, 5805879},
      {1000, 32768000, 524288, 16505, 540842655},
      {5, 10000000, 524288, 5, 10225412},
      {12, 96, 4096, 6150, 49200},
      {3, 100, 0, 3, 100},
      {3, 100, -5, 3, 100},
      {2, 0, 524288, 0, 0},
      {0, 10, 524288, 0, 0},
      {3, 100, 1, 3, 100},
  };
  for (const Case& c : kCases) {
    const auto [count, size] = gofin::internal::profile::ScaleHeapSample(c.count, c.size, c.rate);
    EXPECT_EQ(count, c.want_count) << c.count << " " << c.size << " @" << c.rate;
    EXPECT_EQ(size, c.want_size) << c.count << " " << c.size << " @" << c.rate;
  }
}

TEST(PprofWriter, StripReturnType) {
  using gofin::internal::profile::StripReturnType;
  EXPECT_EQ(StripReturnType("int* gofin::New<int>()"), "gofin::New<int>()");
  EXPECT_EQ(StripReturnType("gofin_test::(anonymous namespace)::T* gofin::New<gofin_test::"
                            "(anonymous namespace)::T, int>(int&&)"),
            "gofin::New<gofin_test::(anonymous namespace)::T, int>(int&&)");
  EXPECT_EQ(StripReturnType("void gofin::internal::F<int>(int) [clone .cold]"),
            "gofin::internal::F<int>(int) [clone .cold]");
  EXPECT_EQ(StripReturnType("gofin::internal::X::operator bool() const"),
            "gofin::internal::X::operator bool() const");
  EXPECT_EQ(StripReturnType("bool gofin::internal::operator< <int>(int, int)"),
            "gofin::internal::operator< <int>(int, int)");
  EXPECT_EQ(StripReturnType("gofin_test::F()::{lambda(int)#1}::operator()(int) const"),
            "gofin_test::F()::{lambda(int)#1}::operator()(int) const");
  EXPECT_EQ(StripReturnType("gofin_malloc"), "gofin_malloc");
  EXPECT_EQ(StripReturnType("gofin::internal::FindObject(void const*)"),
            "gofin::internal::FindObject(void const*)");
}

TEST(PprofWriter, SymbolizerNamesFunctionsAndObjects) {
  const Fixture fx;
  gofin::internal::profile::Symbolizer sym;
  const auto* leaf = sym.Lookup(fx.site.leaf - 1);
  ASSERT_NE(leaf, nullptr);
  EXPECT_EQ(leaf->name, "gofin_test::LeafSite()");
  EXPECT_EQ(leaf->system_name, "_ZN10gofin_test8LeafSiteEv");
  const auto* caller = sym.Lookup(fx.site.caller - 1);
  ASSERT_NE(caller, nullptr);
  EXPECT_EQ(caller->name, "gofin_test::CallerSite()");
  const auto* find = sym.Lookup(fx.find_object - 1);
  ASSERT_NE(find, nullptr);
  EXPECT_EQ(find->name, "gofin::internal::FindObject(void const*)");
  const auto* new_int = sym.Lookup(fx.new_int - 1);
  ASSERT_NE(new_int, nullptr);
  EXPECT_EQ(new_int->name, "int* gofin::New<int>()");
  const auto* libc_named = sym.Lookup(fx.libc_fn - 1);
  ASSERT_NE(libc_named, nullptr);
  EXPECT_EQ(libc_named->name, "getpid");  // a C name, from libc's symbol table
  // Of libc's aliases (__write, __libc_write, write), the public name.
  const auto* write_fn = sym.Lookup(Into(&::write) - 1);
  ASSERT_NE(write_fn, nullptr);
  EXPECT_EQ(write_fn->name, "write");
  EXPECT_EQ(sym.Lookup(fx.unknown), nullptr);

  const auto* main_obj = sym.ObjectAt(fx.site.leaf);
  ASSERT_NE(main_obj, nullptr);
  EXPECT_TRUE(main_obj->main_program);
  EXPECT_TRUE(IsBuildId(main_obj->build_id)) << main_obj->build_id;
  // The loader's copy in memory and the file's (Go's elfBuildID) agree.
  EXPECT_EQ(main_obj->build_id, gofin::internal::profile::ElfBuildId("/proc/self/exe"));
  const auto* libc = sym.ObjectAt(fx.libc_fn);
  ASSERT_NE(libc, nullptr);
  EXPECT_FALSE(libc->main_program);
  EXPECT_NE(libc->path.find("libc"), std::string::npos) << libc->path;
  EXPECT_EQ(sym.ObjectAt(fx.unknown), nullptr);
}

TEST(PprofWriter, BuildIdMatchesReadelf) {
  if (std::system("readelf --version >/dev/null 2>&1") != 0) GTEST_SKIP() << "no readelf";
  const std::string notes = RunCommand("readelf -n " + SelfExe());
  const std::size_t at = notes.find("Build ID: ");
  ASSERT_NE(at, std::string::npos) << notes;
  const std::string id = notes.substr(at + 10, notes.find('\n', at) - at - 10);
  gofin::internal::profile::Symbolizer sym;
  const auto* main_obj = sym.ObjectAt(reinterpret_cast<std::uintptr_t>(&LeafSite));
  ASSERT_NE(main_obj, nullptr);
  EXPECT_EQ(main_obj->build_id, id);
}

TEST(PprofWriter, ProfileDecodesAtRateOne) {
  const Fixture fx;
  const auto before = std::chrono::system_clock::now();
  const Profile p = Decode(Write(fx.Records(), 1));
  const auto after = std::chrono::system_clock::now();

  ASSERT_FALSE(p.strings.empty());
  EXPECT_EQ(p.strings[0], "");
  ASSERT_EQ(p.sample_types.size(), 4U);
  const std::pair<const char*, const char*> kTypes[] = {{"alloc_objects", "count"},
                                                        {"alloc_space", "bytes"},
                                                        {"inuse_objects", "count"},
                                                        {"inuse_space", "bytes"}};
  for (std::size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(p.sample_types[i].type, kTypes[i].first);
    EXPECT_EQ(p.sample_types[i].unit, kTypes[i].second);
  }
  EXPECT_EQ(p.period_type.type, "space");
  EXPECT_EQ(p.period_type.unit, "bytes");
  EXPECT_EQ(p.period, 1);
  EXPECT_EQ(p.default_sample_type, "");  // as Go's WriteHeapProfile: none
  const auto ns = [](auto t) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  };
  EXPECT_GE(p.time_nanos, ns(before));
  EXPECT_LE(p.time_nanos, ns(after));

  ASSERT_EQ(p.samples.size(), 5U);
  using V = std::vector<std::int64_t>;
  EXPECT_EQ(p.samples[0].values, (V{10, 40960, 6, 24576}));
  EXPECT_EQ(p.samples[1].values, (V{3, 3145728, 3, 3145728}));
  EXPECT_EQ(p.samples[2].values, (V{100, 1600, 0, 0}));
  EXPECT_EQ(p.samples[3].values, (V{1, 100000, 1, 100000}));
  EXPECT_EQ(p.samples[4].values, (V{0, 0, 0, 0}));

  // Go's one label per heap sample: the block size, when anything was allocated.
  const std::int64_t kBlockSizes[] = {4096, 1048576, 16, 100000};
  for (std::size_t i = 0; i < 4; ++i) {
    ASSERT_EQ(p.samples[i].labels.size(), 1U) << i;
    EXPECT_EQ(p.samples[i].labels[0].key, "bytes");
    EXPECT_EQ(p.samples[i].labels[0].str, "");
    EXPECT_EQ(p.samples[i].labels[0].num, kBlockSizes[i]);
  }
  EXPECT_TRUE(p.samples[4].labels.empty());

  // gofin's frames (and the unwinder's) are gone from the front of each stack ...
  using S = std::vector<std::string>;
  EXPECT_EQ(p.StackNames(p.samples[0]),
            (S{"gofin_test::LeafSite()", "gofin_test::CallerSite()", "getpid"}));
  EXPECT_EQ(p.StackNames(p.samples[1]),
            (S{"gofin_test::OtherLeafSite()", "gofin_test::OtherCallerSite()"}));
  // ... unless nothing else is left,
  EXPECT_EQ(p.StackNames(p.samples[2]),
            (S{"gofin::internal::FindObject(void const*)", "int* gofin::New<int>()"}));
  // and an unknown address is a location without a line.
  EXPECT_EQ(p.StackNames(p.samples[3]), (S{"gofin_test::LeafSite()", ""}));
  EXPECT_EQ(p.StackNames(p.samples[4]), (S{"gofin_test::LeafSite()"}));

  // One location per address, at the call instruction (return address - 1).
  EXPECT_EQ(p.samples[0].locations[0], p.samples[3].locations[0]);
  EXPECT_EQ(p.samples[0].locations[0], p.samples[4].locations[0]);
  EXPECT_EQ(p.locations.size(), 8U);
  for (std::size_t i = 0; i < p.locations.size(); ++i) EXPECT_EQ(p.locations[i].id, i + 1);
  EXPECT_EQ(p.FindLocation(p.samples[0].locations[0])->address, fx.site.leaf - 1);
  EXPECT_EQ(p.FindLocation(p.samples[0].locations[1])->address, fx.site.caller - 1);
  EXPECT_EQ(p.FindLocation(p.samples[0].locations[2])->address, fx.libc_fn - 1);
  EXPECT_EQ(p.FindLocation(p.samples[2].locations[0])->address, fx.find_object - 1);
  const Profile::Location* unknown = p.FindLocation(p.samples[3].locations[1]);
  EXPECT_EQ(unknown->address, fx.unknown - 1);
  EXPECT_EQ(unknown->mapping_id, 0U);
  EXPECT_TRUE(unknown->function_ids.empty());

  // Functions: demangled name, mangled system name, no file (no DWARF read).
  EXPECT_EQ(p.functions.size(), 7U);
  for (const Profile::Function& f : p.functions) {
    EXPECT_EQ(f.filename, "");
    if (f.name == "gofin_test::LeafSite()") {
      EXPECT_EQ(f.system_name, "_ZN10gofin_test8LeafSiteEv");
    }
    if (f.name == "getpid") {
      EXPECT_EQ(f.system_name, "getpid");
    }
  }

  // Mappings: the program first, with its file and build ID; libc with its own.
  ASSERT_FALSE(p.mappings.empty());
  const Profile::Mapping& main_map = p.mappings[0];
  EXPECT_EQ(main_map.id, 1U);
  EXPECT_EQ(main_map.filename, SelfExe());
  EXPECT_EQ(main_map.build_id, gofin::internal::profile::ElfBuildId("/proc/self/exe"));
  EXPECT_TRUE(IsBuildId(main_map.build_id));
  EXPECT_TRUE(main_map.has_functions);
  EXPECT_LE(main_map.start, fx.site.leaf - 1);
  EXPECT_LT(fx.site.leaf - 1, main_map.limit);
  const Profile::Location* leaf = p.FindLocation(p.samples[0].locations[0]);
  const Profile::Location* libc_loc = p.FindLocation(p.samples[0].locations[2]);
  EXPECT_EQ(leaf->mapping_id, 1U);
  ASSERT_GE(libc_loc->mapping_id, 2U);
  ASSERT_LE(libc_loc->mapping_id, p.mappings.size());
  const Profile::Mapping& libc_map = p.mappings[libc_loc->mapping_id - 1];
  EXPECT_NE(libc_map.filename.find("libc"), std::string::npos) << libc_map.filename;
  EXPECT_TRUE(IsBuildId(libc_map.build_id)) << libc_map.build_id;
  EXPECT_TRUE(libc_map.has_functions);
  for (std::size_t i = 0; i < p.mappings.size(); ++i) {
    EXPECT_EQ(p.mappings[i].id, i + 1);
    EXPECT_LT(p.mappings[i].start, p.mappings[i].limit);
  }
}

TEST(PprofWriter, ValuesScaledAsGoAtDefaultRate) {
  const Fixture fx;
  const Profile p = Decode(Write(fx.Records(), 512 * 1024));
  EXPECT_EQ(p.period, 512 * 1024);
  ASSERT_EQ(p.samples.size(), 5U);
  using V = std::vector<std::int64_t>;
  // Go 1.26's scaleHeapSample for the same records (ScaleHeapSampleMatchesGo's table).
  EXPECT_EQ(p.samples[0].values, (V{1285, 5263386, 771, 3158031}));
  EXPECT_EQ(p.samples[1].values, (V{3, 3638089, 3, 3638089}));
  EXPECT_EQ(p.samples[2].values, (V{3276850, 52429600, 0, 0}));
  EXPECT_EQ(p.samples[3].values, (V{5, 575876, 5, 575876}));
  EXPECT_EQ(p.samples[4].values, (V{0, 0, 0, 0}));
  EXPECT_EQ(p.samples[0].labels.at(0).num, 4096);  // the block size is not scaled
}

TEST(PprofWriter, RealUnwinderStack) {
  const std::vector<std::uintptr_t> stack = UnwoundSite();
  ASSERT_GE(stack.size(), 3U);
  const Profile p = Decode(Write({{64, 0, 1, 0, stack}}, 1));
  ASSERT_EQ(p.samples.size(), 1U);
  const std::vector<std::string> names = p.StackNames(p.samples[0]);
  // libgcc's _Unwind_Backtrace starts at its caller (had it shown its own frame, the writer
  // would leave it out); every frame is a return address, in order.
  ASSERT_EQ(names.size(), stack.size());
  EXPECT_EQ(names[0], "gofin_test::UnwindStack()");
  EXPECT_EQ(names[1], "gofin_test::UnwoundSite()");
  EXPECT_NE(names[2].find("RealUnwinderStack"), std::string::npos) << names[2];
  for (const std::string& name : names) EXPECT_FALSE(name.starts_with("_Unwind_")) << name;
  EXPECT_NE(std::find(names.begin(), names.end(), "main"), names.end());
}

TEST(PprofWriter, DefaultSampleTypeForAllocsProfile) {
  const Fixture fx;
  const Profile p = Decode(Write(fx.Records(), 1, "alloc_space"));
  EXPECT_EQ(p.default_sample_type, "alloc_space");
}

TEST(PprofWriter, EmptyProfile) {
  const Profile p = Decode(Write({}, 512 * 1024));
  EXPECT_EQ(p.sample_types.size(), 4U);
  EXPECT_TRUE(p.samples.empty());
  EXPECT_TRUE(p.locations.empty());
  EXPECT_FALSE(p.mappings.empty());
  for (const Profile::Mapping& m : p.mappings) EXPECT_FALSE(m.has_functions);
}

// ---------------------------------------------------------------------------------------------
// The real client.

class TempProfile {
 public:
  explicit TempProfile(const std::string& bytes)
      : path_(::testing::TempDir() + "gofin_heap_" + std::to_string(::getpid()) + ".pb.gz") {
    std::ofstream(path_, std::ios::binary) << bytes;
  }
  ~TempProfile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The "flat" column of the -top line that names fn, or "" when none does.
std::string TopFlat(const std::string& top, const std::string& fn) {
  std::istringstream in(top);
  for (std::string line; std::getline(in, line);) {
    if (line.size() >= fn.size() && line.ends_with(fn)) {
      std::istringstream fields(line);
      std::string flat;
      fields >> flat;
      return flat;
    }
  }
  return "";
}

TEST(PprofWriter, GoToolPprofReadsIt) {
  if (!HaveGo()) GTEST_SKIP() << "go is not on the PATH: `go tool pprof` not tried";
  const Fixture fx;
  const TempProfile file(Write(fx.Records(), 1));

  // -nodefraction=0: every function, however small its share.
  const std::string space =
      RunCommand("go tool pprof -top -nodefraction=0 -sample_index=alloc_space " + file.path());
  std::printf("go tool pprof -top -sample_index=alloc_space:\n%s\n", space.c_str());
  EXPECT_NE(space.find("Type: alloc_space"), std::string::npos) << space;
  EXPECT_EQ(TopFlat(space, "gofin_test::OtherLeafSite()"), "3072kB") << space;
  EXPECT_EQ(TopFlat(space, "gofin_test::LeafSite()"), "137.66kB") << space;  // 40960+100000
  EXPECT_EQ(TopFlat(space, "gofin::internal::FindObject(void const*)"), "1.56kB") << space;
  EXPECT_EQ(TopFlat(space, "getpid"), "0") << space;
  EXPECT_EQ(space.find("_Unwind_Backtrace"), std::string::npos) << space;

  const std::string objects =
      RunCommand("go tool pprof -top -sample_index=inuse_objects " + file.path());
  std::printf("go tool pprof -top -sample_index=inuse_objects:\n%s\n", objects.c_str());
  EXPECT_NE(objects.find("Type: inuse_objects"), std::string::npos) << objects;
  EXPECT_EQ(TopFlat(objects, "gofin_test::LeafSite()"), "7") << objects;  // 6 + 1
  EXPECT_EQ(TopFlat(objects, "gofin_test::OtherLeafSite()"), "3") << objects;
  EXPECT_EQ(TopFlat(objects, "gofin_test::CallerSite()"), "0") << objects;

  // Without -sample_index pprof shows the last sample type, as for Go's heap profiles.
  const std::string dflt = RunCommand("go tool pprof -top " + file.path());
  EXPECT_NE(dflt.find("Type: inuse_space"), std::string::npos) << dflt;

  const std::string raw = RunCommand("go tool pprof -raw " + file.path());
  std::printf("go tool pprof -raw:\n%s\n", raw.c_str());
  EXPECT_NE(raw.find("PeriodType: space bytes"), std::string::npos) << raw;
  EXPECT_NE(raw.find("alloc_objects/count alloc_space/bytes inuse_objects/count inuse_space/bytes"),
            std::string::npos)
      << raw;
  EXPECT_NE(raw.find("10      40960          6      24576"), std::string::npos) << raw;
  EXPECT_NE(raw.find("bytes:[4096]"), std::string::npos) << raw;
  EXPECT_NE(raw.find(SelfExe()), std::string::npos) << raw;
  char leaf_addr[32];
  std::snprintf(leaf_addr, sizeof leaf_addr, "0x%zx", static_cast<std::size_t>(fx.site.leaf - 1));
  EXPECT_NE(raw.find(leaf_addr), std::string::npos) << raw;
}

}  // namespace
}  // namespace gofin_test
