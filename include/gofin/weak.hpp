#pragma once
// Weak pointers (Go 1.24+: package weak).
#include <cstddef>
#include <type_traits>
#include <utility>

namespace gofin::weak {

template <class T>
class Pointer;
template <class T>
Pointer<T> Make(T* p);

namespace detail {
// The handle of (object, offset): off the GC heap, it holds the address until a collection
// finds the object unreachable, then zero, and lives while the object's weak-handle record
// or any Pointer refers to it (reference counted), so that a Pointer kept in memory the
// collector does not scan (a std::map in malloc memory) stays valid. Returned with one
// reference for the caller. Immortal for a pointer outside the heap's arenas (a global,
// malloc'd memory).
void* MakeHandle(const void* p);
void RetainHandle(void* handle) noexcept;
void ReleaseHandle(void* handle) noexcept;
// The address a handle holds, exact against the sweeper; nullptr once it was cleared.
void* HandleValue(void* handle) noexcept;
}  // namespace detail

// Go: weak.Pointer[T]. One word (the handle); copyable; == compares identity (the same object
// and offset). A default Pointer is nil. It never keeps its object alive, and may be kept
// anywhere (also in memory the collector does not scan).
// One assignment operator by value serves copy and move (copy-and-swap).
template <class T>
class Pointer {  // NOLINT(cppcoreguidelines-special-member-functions)
 public:
  Pointer() = default;
  Pointer(const Pointer& o) noexcept : handle_(o.handle_) {
    if (handle_ != nullptr) detail::RetainHandle(handle_);
  }
  Pointer(Pointer&& o) noexcept : handle_(o.handle_) { o.handle_ = nullptr; }
  Pointer& operator=(Pointer o) noexcept {
    std::swap(handle_, o.handle_);
    return *this;
  }
  ~Pointer() {
    if (handle_ != nullptr) detail::ReleaseHandle(handle_);
  }
  // The object, or nullptr once a collection found it unreachable (for an object with a
  // finalizer: in the cycle that queues the finalizer, and from then on, even if the
  // finalizer resurrects it).
  [[nodiscard]] T* Value() const noexcept { return static_cast<T*>(detail::HandleValue(handle_)); }
  friend bool operator==(const Pointer& a, const Pointer& b) noexcept {
    return a.handle_ == b.handle_;
  }

 private:
  friend Pointer<T> Make<T>(T* p);
  explicit Pointer(void* handle) : handle_(handle) {}
  void* handle_ = nullptr;
};

// Go: weak.Make. Make(nullptr) is nil; two Makes of the same live pointer compare equal.
// gofin::Error (`weak.Make: pointer not in allocated block`) for a pointer to a freed object.
template <class T>
Pointer<T> Make(T* p) {
  static_assert(!std::is_function_v<T>, "gofin::weak::Make: T must be an object type");
  if (p == nullptr) return Pointer<T>();
  return Pointer<T>(
      detail::MakeHandle(const_cast<const void*>(static_cast<const volatile void*>(p))));
}

}  // namespace gofin::weak
