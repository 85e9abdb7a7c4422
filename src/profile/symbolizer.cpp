// Go: runtime.CallersFrames / FuncForPC (for C++ frames), runtime/pprof elf.go (elfBuildID).
// In-process ELF symbolization: the loaded objects from dl_iterate_phdr, their symbol tables
// from the files, mapped read-only and parsed with <elf.h>'s structures alone.
#include "profile/symbolizer.hpp"

#include <cxxabi.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <span>
#include <unordered_map>
#include <utility>

namespace gofin::internal::profile {

namespace {

// A file mapped read-only for as long as the symbols read from it are in use: their names are
// views into it, so a table of a hundred thousand symbols costs no copies.
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const char* path) {
    const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    struct stat st {};
    if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
      void* p =
          ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
      if (p != MAP_FAILED) {
        data_ = static_cast<const std::byte*>(p);
        size_ = static_cast<std::size_t>(st.st_size);
      }
    }
    ::close(fd);  // the mapping keeps the file
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
  }
  MappedFile(MappedFile&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  MappedFile& operator=(MappedFile&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    return *this;
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const std::byte> bytes() const { return {data_, size_}; }

 private:
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

// Copies a T out of bytes at off, if it fits: ELF files are untrusted input (truncated,
// replaced on disk since they were loaded) and their fields need not be aligned for T.
template <typename T>
bool ReadAt(std::span<const std::byte> bytes, std::uint64_t off, T& out) {
  if (off > bytes.size() || bytes.size() - off < sizeof(T)) return false;
  std::memcpy(&out, bytes.data() + off, sizeof(T));
  return true;
}

std::string Hex(std::span<const std::byte> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s;
  s.reserve(bytes.size() * 2);
  for (const std::byte b : bytes) {
    s.push_back(kDigits[std::to_integer<unsigned>(b) >> 4]);
    s.push_back(kDigits[std::to_integer<unsigned>(b) & 0xf]);
  }
  return s;
}

// The NT_GNU_BUILD_ID in a run of notes (a PT_NOTE segment or an SHT_NOTE section), as Go's
// elfBuildID prints it (%x). Name and descriptor are padded to the run's alignment, which is
// 8 for some 64-bit segments (e.g. .note.gnu.property's) and 4 otherwise.
std::string BuildIdFromNotes(std::span<const std::byte> notes, std::uint64_t align) {
  const std::uint64_t a = align == 8 ? 8 : 4;
  const auto pad = [a](std::uint64_t n) { return (n + a - 1) & ~(a - 1); };
  std::uint64_t off = 0;
  Elf64_Nhdr nh;
  while (ReadAt(notes, off, nh)) {
    const std::uint64_t name_off = off + sizeof(nh);
    const std::uint64_t desc_off = name_off + pad(nh.n_namesz);
    const std::uint64_t next = desc_off + pad(nh.n_descsz);
    if (next > notes.size() || desc_off + nh.n_descsz > notes.size()) break;
    if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 &&
        std::memcmp(notes.data() + name_off, "GNU", 4) == 0) {
      return Hex(notes.subspan(desc_off, nh.n_descsz));
    }
    off = next;
  }
  return {};
}

// A view of a 64-bit little-endian ELF file's section headers (x86-64 only, as gofin).
class ElfFile {
 public:
  explicit ElfFile(std::span<const std::byte> bytes) : bytes_(bytes) {
    if (!ReadAt(bytes_, 0, eh_) || std::memcmp(eh_.e_ident, ELFMAG, SELFMAG) != 0 ||
        eh_.e_ident[EI_CLASS] != ELFCLASS64 || eh_.e_ident[EI_DATA] != ELFDATA2LSB ||
        eh_.e_shentsize != sizeof(Elf64_Shdr)) {
      return;
    }
    valid_ = true;
    section_count_ = eh_.e_shnum;
    // Past 0xff00 sections e_shnum is 0 and the count is in section 0's sh_size.
    Elf64_Shdr first;
    if (section_count_ == 0 && eh_.e_shoff != 0 && ReadAt(bytes_, eh_.e_shoff, first)) {
      section_count_ = first.sh_size;
    }
  }

  bool valid() const { return valid_; }
  std::size_t section_count() const { return section_count_; }

  bool Section(std::size_t i, Elf64_Shdr& sh) const {
    return i < section_count_ && ReadAt(bytes_, eh_.e_shoff + i * sizeof(Elf64_Shdr), sh);
  }

  // The section's contents; empty when they lie outside the file (or are NOBITS).
  std::span<const std::byte> Contents(const Elf64_Shdr& sh) const {
    if (sh.sh_type == SHT_NOBITS || sh.sh_offset > bytes_.size() ||
        bytes_.size() - sh.sh_offset < sh.sh_size) {
      return {};
    }
    return bytes_.subspan(sh.sh_offset, sh.sh_size);
  }

  // Go's elfBuildID: the first NT_GNU_BUILD_ID in an SHT_NOTE section. Sections rather than
  // segments, since a separate debug file keeps the notes but not what its segments point to.
  std::string BuildId() const {
    Elf64_Shdr sh;
    for (std::size_t i = 0; i < section_count(); ++i) {
      if (!Section(i, sh) || sh.sh_type != SHT_NOTE) continue;
      std::string id = BuildIdFromNotes(Contents(sh), sh.sh_addralign);
      if (!id.empty()) return id;
    }
    return {};
  }

 private:
  std::span<const std::byte> bytes_;
  Elf64_Ehdr eh_{};
  bool valid_ = false;
  std::size_t section_count_ = 0;
};

struct SymbolEntry {
  std::uintptr_t start = 0;  // run-time address
  std::uint64_t size = 0;
  std::string_view name;  // mangled, into the mapped file
  int rank = 0;           // lower wins among symbols at one address
};

// Among aliases of one address, the name a reader expects: an exported one over a file-local
// one, then the one with the fewest leading underscores, since libc exports its public names
// (write) as aliases of internal ones (__write, __libc_write) of either binding.
int AliasRank(unsigned char info, std::string_view name) {
  const int local = ELF64_ST_BIND(info) == STB_LOCAL ? 1 : 0;
  const auto underscores = static_cast<int>(std::min<std::size_t>(name.find_first_not_of('_'), 8));
  return local * 16 + underscores;
}

std::string Demangle(const std::string& mangled) {
  // Only names in the Itanium C++ ABI's mangling; __cxa_demangle would also "demangle" a C
  // name such as "f" as a type ("float").
  if (!mangled.starts_with("_Z")) return mangled;
  int status = 0;
  const std::unique_ptr<char, decltype(&std::free)> out(
      abi::__cxa_demangle(mangled.c_str(), nullptr, nullptr, &status), &std::free);
  return status == 0 && out != nullptr ? std::string(out.get()) : mangled;
}

}  // namespace

struct Symbolizer::Object {
  LoadedObject info;
  std::uintptr_t bias = 0;  // dlpi_addr: run-time address minus link-time address
  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> segments;  // PT_LOAD [lo, hi)

  bool symbols_read = false;
  MappedFile file;
  std::vector<SymbolEntry> symbols;                           // sorted by start, one per address
  std::unordered_map<std::size_t, FunctionSymbol> demangled;  // by index into symbols

  bool Contains(std::uintptr_t addr) const {
    return std::ranges::any_of(
        segments, [addr](const auto& s) { return s.first <= addr && addr < s.second; });
  }

  void ReadSymbols();
  bool ReadSymbolsFrom(const std::string& path);
};

// Tries the separate debug file by build ID first (where distributions put the .symtab a
// stripped library lost; only if installed), then the object's own file.
void Symbolizer::Object::ReadSymbols() {
  symbols_read = true;
  if (info.path.empty() || info.path.front() != '/') return;  // the vDSO: not a file
  if (info.build_id.size() > 2) {
    const std::string debug = "/usr/lib/debug/.build-id/" + info.build_id.substr(0, 2) + "/" +
                              info.build_id.substr(2) + ".debug";
    if (::access(debug.c_str(), R_OK) == 0 && ReadSymbolsFrom(debug)) return;
  }
  ReadSymbolsFrom(info.path);
}

bool Symbolizer::Object::ReadSymbolsFrom(const std::string& path) {
  MappedFile mapped(path.c_str());
  const ElfFile elf(mapped.bytes());
  if (!elf.valid()) return false;
  // A file replaced on disk since it was loaded would name every address wrongly: better
  // none. (Without a build ID on either side there is nothing to compare.)
  if (!info.build_id.empty()) {
    const std::string file_id = elf.BuildId();
    if (!file_id.empty() && file_id != info.build_id) return false;
  }

  // .symtab has every function, local ones too; .dynsym (what `strip` leaves) only those
  // exported.
  Elf64_Shdr symtab{};
  bool found = false;
  for (const unsigned type : {SHT_SYMTAB, SHT_DYNSYM}) {
    Elf64_Shdr sh;
    for (std::size_t i = 0; i < elf.section_count() && !found; ++i) {
      if (elf.Section(i, sh) && sh.sh_type == type && !elf.Contents(sh).empty()) {
        symtab = sh;
        found = true;
      }
    }
    if (found) break;
  }
  Elf64_Shdr strtab;
  if (!found || !elf.Section(symtab.sh_link, strtab)) return false;
  const std::span<const std::byte> syms = elf.Contents(symtab);
  const std::span<const std::byte> strs = elf.Contents(strtab);

  std::vector<SymbolEntry> out;
  for (std::uint64_t off = 0; off + sizeof(Elf64_Sym) <= syms.size(); off += sizeof(Elf64_Sym)) {
    Elf64_Sym sym;
    ReadAt(syms, off, sym);
    const unsigned type = ELF64_ST_TYPE(sym.st_info);
    if ((type != STT_FUNC && type != STT_GNU_IFUNC) || sym.st_shndx == SHN_UNDEF ||
        sym.st_value == 0 || sym.st_name >= strs.size()) {
      continue;
    }
    const auto* name = reinterpret_cast<const char*>(strs.data() + sym.st_name);
    const std::size_t len = strnlen(name, strs.size() - sym.st_name);
    if (len == 0 || len == strs.size() - sym.st_name) continue;  // empty or unterminated
    out.push_back({static_cast<std::uintptr_t>(bias + sym.st_value), sym.st_size,
                   std::string_view(name, len), AliasRank(sym.st_info, {name, len})});
  }
  if (out.empty()) return false;

  // One entry per address, the preferred alias first; the name breaks ties so that the
  // profile is the same from run to run.
  std::ranges::sort(out, [](const SymbolEntry& a, const SymbolEntry& b) {
    if (a.start != b.start) return a.start < b.start;
    if (a.rank != b.rank) return a.rank < b.rank;
    if ((a.size == 0) != (b.size == 0)) return a.size != 0;
    return a.name < b.name;
  });
  out.erase(
      std::unique(out.begin(), out.end(),
                  [](const SymbolEntry& a, const SymbolEntry& b) { return a.start == b.start; }),
      out.end());

  symbols = std::move(out);
  file = std::move(mapped);
  return true;
}

Symbolizer::Symbolizer() {
  // Everything read from the objects' memory (segments, build-ID notes) is read here, inside
  // the loader's lock, where no dlclose can unmap it.
  dl_iterate_phdr(
      [](dl_phdr_info* dl, std::size_t, void* ctx) -> int {
        auto& objects = *static_cast<std::vector<std::unique_ptr<Object>>*>(ctx);
        auto obj = std::make_unique<Object>();
        const bool first = objects.empty();
        obj->bias = dl->dlpi_addr;
        if (dl->dlpi_name == nullptr || dl->dlpi_name[0] == '\0') {
          // The program itself comes first, without a name; its file is /proc/self/exe
          // (which opens even if the file was deleted or renamed since).
          if (!first) return 0;
          obj->info.path = "/proc/self/exe";
          obj->info.main_program = true;
        } else {
          obj->info.path = dl->dlpi_name;
        }
        for (int i = 0; i < dl->dlpi_phnum; ++i) {
          const ElfW(Phdr)& ph = dl->dlpi_phdr[i];
          const std::uintptr_t lo = dl->dlpi_addr + ph.p_vaddr;
          if (ph.p_type == PT_LOAD) {
            obj->segments.emplace_back(lo, lo + ph.p_memsz);
          } else if (ph.p_type == PT_NOTE && obj->info.build_id.empty()) {
            obj->info.build_id =
                BuildIdFromNotes({reinterpret_cast<const std::byte*>(lo), ph.p_filesz}, ph.p_align);
          }
        }
        objects.push_back(std::move(obj));
        return 0;
      },
      &objects_);
}

Symbolizer::~Symbolizer() = default;

Symbolizer::Object* Symbolizer::FindObject(std::uintptr_t addr) const {
  for (const auto& obj : objects_) {
    if (obj->Contains(addr)) return obj.get();
  }
  return nullptr;
}

const LoadedObject* Symbolizer::ObjectAt(std::uintptr_t addr) const {
  const Object* obj = FindObject(addr);
  return obj != nullptr ? &obj->info : nullptr;
}

const FunctionSymbol* Symbolizer::Lookup(std::uintptr_t pc) {
  Object* obj = FindObject(pc);
  if (obj == nullptr) return nullptr;
  if (!obj->symbols_read) obj->ReadSymbols();
  const auto& syms = obj->symbols;
  auto it = std::ranges::upper_bound(syms, pc, {}, &SymbolEntry::start);
  if (it == syms.begin()) return nullptr;
  --it;
  // A symbol without a size (hand-written assembly often has none) is taken to reach the
  // next one, as dladdr takes every symbol.
  if (it->size != 0 && pc - it->start >= it->size) return nullptr;
  const auto index = static_cast<std::size_t>(it - syms.begin());
  auto [cached, inserted] = obj->demangled.try_emplace(index);
  if (inserted) {
    cached->second.system_name = std::string(it->name);
    cached->second.name = Demangle(cached->second.system_name);
  }
  return &cached->second;
}

std::string ElfBuildId(const std::string& path) {
  const MappedFile mapped(path.c_str());
  return ElfFile(mapped.bytes()).BuildId();
}

namespace {
// Whether s ends in "operator" or "operator<op>": the space after it ("operator bool",
// "operator< <int>") is inside the name.
bool EndsWithOperator(std::string_view s) {
  const std::size_t end = s.find_last_not_of("<>=!+-*/%&|^~,[]()");
  return s.substr(0, end == std::string_view::npos ? 0 : end + 1).ends_with("operator");
}
}  // namespace

// Scans back from the parameter list to the space before the name at nesting depth zero.
// Spaces inside template arguments, parameter lists, "(anonymous namespace)" or
// "{lambda()#1}" are nested; a return type is only ever followed by one at depth zero.
std::string_view StripReturnType(std::string_view name) {
  // The parameter list: the last ')' outside "[clone .cold]"-style suffixes (after it come
  // only qualifiers such as " const" and those suffixes).
  std::size_t close = std::string_view::npos;
  int brackets = 0;
  for (std::size_t i = name.size(); i-- > 0;) {
    const char c = name[i];
    if (c == ']') {
      ++brackets;
    } else if (c == '[' && brackets > 0) {
      --brackets;
    } else if (c == ')' && brackets == 0) {
      close = i;
      break;
    }
  }
  if (close == std::string_view::npos) return name;  // a C name: nothing to strip
  int depth = 0;
  std::size_t open = std::string_view::npos;
  for (std::size_t i = close + 1; i-- > 0;) {
    if (name[i] == ')') ++depth;
    if (name[i] == '(' && --depth == 0) {
      open = i;
      break;
    }
  }
  if (open == std::string_view::npos) return name;
  depth = 0;
  for (std::size_t i = open; i-- > 0;) {
    const char c = name[i];
    if (c == ')' || c == '>' || c == ']' || c == '}') {
      ++depth;
    } else if ((c == '(' || c == '<' || c == '[' || c == '{') && depth > 0) {
      --depth;  // never below zero: "operator<" and the like have no partner
    } else if (c == ' ' && depth == 0 && !EndsWithOperator(name.substr(0, i))) {
      return name.substr(i + 1);
    }
  }
  return name;
}

}  // namespace gofin::internal::profile
