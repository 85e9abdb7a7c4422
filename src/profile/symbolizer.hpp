#pragma once
// Go: runtime.CallersFrames / FuncForPC, for the C++ frames of a heap profile; and pprof's
// elfBuildID (runtime/pprof elf.go). Names the function at an address from the ELF symbol
// tables of the loaded objects, in the process: the profile then reads without the binaries
// at hand, as Go's profiles do.
//
// Go knows every function from its own pclntab. A C++ program has only what the linker left
// in each object: .symtab (every function, unless stripped) or .dynsym (the exported ones),
// with no line numbers unless DWARF is there, which this does not read (it stays free of
// libelf/libdw; pprof can still add lines from the binaries, by build ID).
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace gofin::internal::profile {

// A function symbol containing an address.
struct FunctionSymbol {
  std::string system_name;  // as in the symbol table (mangled, for C++)
  std::string name;         // demangled; system_name when it is not a C++ name
};

// A loaded object (dl_iterate_phdr): the program, a shared library, the vDSO.
struct LoadedObject {
  std::string path;      // the file it was loaded from; /proc/self/exe for the program
  std::string build_id;  // NT_GNU_BUILD_ID in lower-case hex; empty when it has none
  bool main_program = false;
};

// A snapshot of the loaded objects, taken at construction; symbol tables are read on the
// first lookup in each object. For one profile write: neither thread-safe nor cheap to build
// (it mmaps the files), and an object dlclosed after construction may be named wrongly.
class Symbolizer {
 public:
  Symbolizer();
  ~Symbolizer();
  Symbolizer(const Symbolizer&) = delete;
  Symbolizer& operator=(const Symbolizer&) = delete;

  // The function whose code holds pc (an address of an instruction: for a return address,
  // pass it minus one); nullptr when no symbol table of a loaded object covers it. The
  // pointer stays valid as long as the Symbolizer.
  const FunctionSymbol* Lookup(std::uintptr_t pc);

  // The object one of whose loaded segments holds addr; nullptr when none does.
  const LoadedObject* ObjectAt(std::uintptr_t addr) const;

  struct Object;  // defined in symbolizer.cpp

 private:
  Object* FindObject(std::uintptr_t addr) const;

  std::vector<std::unique_ptr<Object>> objects_;
};

// Go: elfBuildID. The GNU build ID of the ELF file at path, in hex; empty if it has none or
// cannot be read. (For a loaded object LoadedObject::build_id has it from memory.)
std::string ElfBuildId(const std::string& path);

// The part of a demangled C++ function name that names it: without the return type a
// template function's mangled name carries ("int* gofin::New<int>()" -> "gofin::New<int>()"),
// so that a prefix such as "gofin::New<" matches it.
std::string_view StripReturnType(std::string_view name);

}  // namespace gofin::internal::profile
