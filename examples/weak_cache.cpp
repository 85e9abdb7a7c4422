// weak_cache: a canonicalization map, where equal strings share one object while any user
// holds it, and the map forgets an entry once nobody does.
//
// Go idiom: package unique (unique.Make). Its map holds weak pointers (package weak), so it
// never keeps a value alive by itself, and each value has a cleanup (runtime.AddCleanup) that
// deletes its key once the value is freed, so the map does not fill up with dead slots.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <gofin/gofin.hpp>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

using namespace std::chrono_literals;

// The canonical object. It lives in the GC heap (gofin::New); its std::string member frees its
// own buffer when gofin's destructor thread runs ~Entry() after the object was found dead.
struct Entry {
  explicit Entry(std::string v) : value(std::move(v)) {}
  std::string value;
};

class Interner {
 public:
  // Go: unique.Make. The same pointer for equal strings while the entry is alive.
  Entry* Intern(const std::string& s) {
    {
      std::lock_guard lock(mu_);
      if (auto it = map_.find(s); it != map_.end()) {
        if (Entry* e = it->second.Value()) return e;  // alive: share it
      }
    }
    // Allocate outside the lock: the critical section stays short, and a cleanup thread that
    // waits for the lock never waits for an allocation (which may run a collection).
    Entry* fresh = gofin::New<Entry>(s);
    {
      std::lock_guard lock(mu_);
      auto& slot = map_[s];
      if (Entry* e = slot.Value()) return e;  // another thread won the race: use its entry
      // A weak pointer may live anywhere, here in the map's malloc'd nodes, which gofin does
      // not scan: it keeps nothing alive, and Value() turns null once the entry is collected.
      slot = gofin::weak::Make(fresh);
    }
    // The cleanup must not reach the entry, or the entry would stay reachable forever
    // (gofin::AddCleanup throws gofin::Error when it can tell). So it captures the interner
    // and takes the key by value: both are outside the GC heap's view of the entry.
    gofin::AddCleanup(
        fresh, [this](const std::string& key) { Forget(key); }, s);
    return fresh;
  }

  std::size_t Size() {
    std::lock_guard lock(mu_);
    return map_.size();
  }

  int forgotten() const { return forgotten_.load(); }

 private:
  // Runs on a cleanup thread, after the entry was freed, concurrently with the program and
  // with other cleanups: hence the mutex. The key may have been interned again meanwhile, with
  // a new live entry in the slot: erase only a slot whose pointer is dead (Go's unique does the
  // same with CompareAndDelete).
  void Forget(const std::string& key) {
    std::lock_guard lock(mu_);
    if (auto it = map_.find(key); it != map_.end() && it->second.Value() == nullptr) {
      map_.erase(it);
      forgotten_.fetch_add(1, std::memory_order_relaxed);
    }
  }

  std::mutex mu_;
  std::unordered_map<std::string, gofin::weak::Pointer<Entry>> map_;
  std::atomic<int> forgotten_{0};
};

// Never destroyed: a cleanup may still run on another thread while the program exits, and must
// not find a destroyed map (Go's unique map is a global that lives forever too).
Interner& interner = *new Interner();  // NOLINT(cppcoreguidelines-owning-memory)

constexpr int kDropped = 2000;
constexpr int kKept = 10;

// Interns kDropped strings and keeps kKept of them (Root: a GC pointer kept in malloc'd memory,
// here a std::vector, must be rooted to keep its object alive). In a noinline function so
// that the other pointers die with its frame: gofin scans stacks conservatively.
[[gnu::noinline]] void InternMany(std::vector<gofin::Root<Entry>>& kept) {
  for (int i = 0; i < kDropped + kKept; ++i) {
    Entry* e = interner.Intern("word-" + std::to_string(i));
    if (i < kKept) kept.emplace_back(e);
  }
}

[[gnu::noinline]] bool SameTwice(const char* s) {
  Entry* a = interner.Intern(s);
  Entry* b = interner.Intern(s);
  std::printf("1. Intern(\"%s\") twice: %p and %p (%s)\n", s, static_cast<void*>(a),
              static_cast<void*>(b), a == b ? "the same object" : "DIFFERENT");
  return a == b;
}

}  // namespace

int main() {
  std::printf("weak_cache: a canonicalization map (Go: package unique)\n");
  if (!SameTwice("x")) return 1;

  std::vector<gofin::Root<Entry>> kept;
  InternMany(kept);
  const std::size_t full = interner.Size();
  std::printf("2. interned %d strings, kept %d: the map has %zu keys\n", kDropped + kKept, kKept,
              full);

  // GC() frees the dropped entries and queues their cleanups; wait for the cleanup threads
  // (bounded). More rounds catch an entry a stale word on a stack kept alive in an earlier one.
  for (int round = 1; round <= 3 && interner.Size() > kKept + 2 + kDropped / 10; ++round) {
    gofin::GC();
    if (!gofin::testing::BlockUntilEmptyCleanupQueue(30s)) {
      std::printf("FAIL: the cleanup queue did not drain within 30 s\n");
      return 1;
    }
    std::printf("3. after GC #%d: %zu keys (%d erased by cleanups)\n", round, interner.Size(),
                interner.forgotten());
  }

  // The kept entries are still canonical: interning again gives the same objects.
  bool kept_ok = true;
  for (int i = 0; i < kKept; ++i) {
    kept_ok = kept_ok && interner.Intern("word-" + std::to_string(i)) == kept[i].get();
  }
  std::printf("4. the %d kept entries are still the canonical ones: %s\n", kKept,
              kept_ok ? "yes" : "NO");

  // Conservative scanning may keep a few dropped entries alive: require 90% of them gone.
  const std::size_t left = interner.Size();
  if (!kept_ok || left > full - kDropped * 9 / 10) {
    std::printf("FAIL: expected the map to shrink by at least %d keys (from %zu; %zu left)\n",
                kDropped * 9 / 10, full, left);
    return 1;
  }
  std::printf("OK\n");
  return 0;
}
