#pragma once
// A reference model of gofin's collector and finalizer semantics, shared by the multi-threaded
// oracle (tests/oracle/oracle_main.cpp) and the libFuzzer target (tests/fuzz/fuzz_api.cpp).
//
// The real heap holds a graph of `Node`s (an id, a canary, kChildren child pointers, possibly
// interior pointers). The model mirrors it in plain C++ keyed by id and never holds a gofin
// pointer. Everything the library does that the program can observe is written to one event
// log, in one total order (a mutex): mutator operations, finalizer runs (with what the
// finalizer saw and did) and destructor runs. The checker replays the log on the model and
// checks every finalizer and destructor against the graph as it was at that point of the log
// ("safety"), and at exact collections it predicts the cycle's outcome precisely.
//
// Soundness of the replay checks with concurrent automatic collections: a mutator logs an
// edge/root/registration REMOVAL before it performs it and an ADDITION after it (holding the
// object with KeepAlive until then), so at every point of the log the model's edges, roots and
// registrations are a subset of what the heap really had when that entry was written. An
// object the collector found unreachable can never become reachable again (no mutator can
// name it; finalizers only store into resurrection slots that mutators never read), so a
// finalizer or destructor logged for an object that the replayed model reaches is a bug.
//
// Exactness at checkpoints: mutator threads have exited (their stacks are gone), pacing is off
// (SetGCPercent(-1), no memory limit), the finalizer queue is drained (the finalizer thread
// wipes its dead stack before it sleeps), the checking thread's stack is excluded with
// testing::GC(StackState::kNoHeapPointers), and no global holds a graph pointer. Then a cycle
// must do exactly what Go's rules say; the model predicts which finalizers are queued and
// which destructors run and the checker compares sets.
//
// Cleanups (runtime.AddCleanup) and weak pointers (package weak) follow the same scheme. A
// cleanup's callable and argument live in a GC block of their own that is marked while the
// cleanup is set or queued: the model marks a cleanup's argument node (if it has one) from
// the roots until the cleanup runs or is stopped, so an argument that reaches the object keeps
// it forever and its cleanups never run, without a rule of their own. A cleanup runs exactly
// once, after the cycle that frees its object (an object with a finalizer: after the later
// cycle that frees it, never the finalizer's); a stopped one never. A cleanup's log entry may
// come before or after its object's destructor's (two threads): the model's record is "set"
// until one of them, "pending" from the destructor to the run. Weak pointers live in a table
// in malloc memory registered with AddRoots (a weak pointer is the address of a pointer-free
// handle block that only keeps itself alive); a weak entry of the model is "cleared" from the
// finalizer run or the destructor of its object on (the library clears it earlier, in the
// cycle that queues the finalizer or frees the object). Replay checks are one-sided: a
// non-nil Value() needs an intact object whose entry is not cleared, a nil one an entry that
// is cleared or an object the model does not mark. A mutator that still reaches the object
// knows the answer exactly, and so does every exact cycle, for every entry.
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <gofin/gofin.hpp>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace oracle {

inline constexpr int kChildren = 3;
inline constexpr int kResSlots = 8;
// Far above any heap address (the heap lives below 2^47): never mistaken for a pointer.
inline constexpr std::uint64_t kCanary = 0xC0FFEE00D15EA5E5ULL;
inline constexpr std::uint64_t kDeadCanary = 0xDEADDEADDEADDEADULL;
// Offsets at which an edge may point into its target (interior pointers keep objects alive).
inline constexpr std::uint32_t kEdgeOffsets[] = {0, 8, 24, 48, 55};
inline constexpr int kNumEdgeOffsets = 5;
inline constexpr int kFinThread = 100;
inline constexpr int kSweepThread = 101;
inline constexpr int kChecker = 102;
inline constexpr int kClnThread = 103;  // the cleanup threads (any of them)
inline constexpr int kWeakSlots = 16;
// Offsets at which AddCleanup, its argument and weak::Make point into an object.
inline constexpr std::uint32_t kInnerOffsets[] = {0, 8, 24, 48};
inline constexpr int kNumInnerOffsets = 4;

std::string Fmt(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline std::string Fmt(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

inline std::uint64_t Mix(std::uint64_t x) {  // splitmix64 finaliser
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// ---------------------------------------------------------------------------------------------
// The heap side
// ---------------------------------------------------------------------------------------------

struct Node {
  Node(std::uint64_t i, std::uint32_t sk) : id(i), canary(kCanary ^ i), size_kind(sk) {}
  ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  std::uint64_t id;
  std::uint64_t canary;
  void* child[kChildren] = {};  // may point inside the child: child_off[k] bytes past its start
  std::uint32_t child_off[kChildren] = {};
  std::uint32_t size_kind;
};
static_assert(sizeof(Node) == 56);

template <std::size_t Pad>
struct PaddedNode : Node {
  PaddedNode(std::uint64_t i, std::uint32_t sk) : Node(i, sk) {}
  unsigned char pad[Pad] = {};
};
inline constexpr int kSizeKinds = 4;  // 64-byte class, 256, 2 KiB class, large (40 KB) span

inline bool NodeOk(const Node* n, std::uint64_t id) {
  return n != nullptr && n->id == id && n->canary == (kCanary ^ id);
}

inline Node* NewNode(int size_kind, std::uint64_t id) {
  const auto sk = static_cast<std::uint32_t>(size_kind);
  switch (size_kind) {
    case 1:
      return gofin::New<PaddedNode<200>>(id, sk);
    case 2:
      return gofin::New<PaddedNode<1500>>(id, sk);
    case 3:
      return gofin::New<PaddedNode<40000>>(id, sk);
    default:
      return gofin::New<Node>(id, sk);
  }
}

// sizeof the node type of a size kind: an edge at this offset is a one-past-the-end pointer
// (API.md: it keeps its own object alive, never the next one).
inline std::uint32_t NodeBytes(int size_kind) {
  switch (size_kind) {
    case 1:
      return sizeof(PaddedNode<200>);
    case 2:
      return sizeof(PaddedNode<1500>);
    case 3:
      return sizeof(PaddedNode<40000>);
    default:
      return sizeof(Node);
  }
}

// Pointer-free and pointerful garbage that is not modelled (churn for the pacer).
struct Junk {
  std::uint64_t words[6];
  ~Junk() { words[0] = 0; }
};

enum class Ev : std::uint8_t {
  kAlloc,
  kLink,
  kUnlink,
  kRoot,
  kUnroot,
  kReg,
  kUnreg,
  kFinRun,
  kDtor,
  kClnAdd,    // x: node, c: cleanup number, arg: argument node (0: an integer)
  kClnStop,   // c
  kClnRun,    // c, x (0: the callable does not know it), arg; cap_ok: the argument was intact
  kWeakMake,  // x: node, k: weak slot, off
  kWeakVal    // x, k, off as made; y: Value() was non-nil; x_ok: what it returned was intact
};

// How a registration's finalizer behaves. kind 0: a stateful functor (can capture an object,
// resurrect, re-register); 1: a plain function pointer; 2: a captureless lambda taking
// const Node*; 3: a captureless lambda taking void*.
struct Reg {
  std::uint64_t g = 0;  // registration number; 0: none
  int kind = 0;
  int res_slot = -1;      // the finalizer stores its object into resurrection slot res_slot
  bool rereg = false;     // the finalizer calls SetFinalizer on its object again
  std::uint64_t cap = 0;  // id of a captured object (kept alive while set or queued)
  bool operator==(const Reg&) const = default;
};

struct Event {
  Ev kind{};
  int thread = 0;
  std::uint64_t x = 0;  // node id (kRoot/kUnroot: slot)
  std::uint64_t y = 0;  // target id (kLink, kRoot); kFinRun: g of the re-registration or 0
  std::uint32_t k = 0, off = 0;
  Reg reg;             // kReg: the registration; kUnreg: its g; kFinRun: g (0 = stateless)
  bool x_ok = true;    // kFinRun, kDtor: the object's id/canary were intact
  bool cap_ok = true;  // kFinRun: the captured object was intact
  int res_done = -1;   // kFinRun: resurrection slot written
  std::uint64_t child[kChildren] = {};  // kFinRun: ids the finalizer found (~0: corrupt)
  std::uint32_t child_off[kChildren] = {};
  int size_kind = 0;
  std::uint64_t c = 0, arg = 0;  // cleanups
};

struct Shared {
  std::mutex mu;
  std::vector<Event> events;
  std::vector<std::string> violations;   // seen by mutators, finalizers, destructors
  std::vector<gofin::Root<Node>> roots;  // ordinary roots: mutators use them
  std::vector<gofin::Root<Node>> res;    // resurrection roots: only finalizers write them
  std::atomic<bool> final_mode{false};   // finalizers neither resurrect nor re-register
  std::atomic<std::uint64_t> next_g{1};
  std::atomic<std::uint64_t> next_c{1};  // cleanup numbers
  std::uint64_t seed = 0;
  // The handle of every cleanup not known to be finished, by cleanup number (under mu). A
  // gofin::Cleanup holds no GC pointer.
  std::unordered_map<std::uint64_t, gofin::Cleanup> cln_handles;
  // kWeakSlots weak pointers, malloc'd and registered as a root range: a weak pointer is the
  // address of its handle block, which only a scanned copy keeps alive once the object died.
  // Slot w is written by the thread that owns it in the plan, read by the checker in between.
  gofin::weak::Pointer<Node>* weak = nullptr;
  // With record_addrs, Execute notes every node's address here (under mu), so that FinalDrain
  // can reach the objects of finalizer cycles that nothing references, and release them.
  // malloc'd memory, which no collection scans: it keeps nothing alive.
  bool record_addrs = false;
  std::unordered_map<std::uint64_t, Node*> addrs;

  Shared(int nroots) : roots(static_cast<std::size_t>(nroots)), res(kResSlots) {
    weak = new gofin::weak::Pointer<Node>[kWeakSlots];
    gofin::AddRoots(weak, weak + kWeakSlots);
  }

  // A spinning try_lock, not a blocking lock: under ThreadSanitizer a thread blocked inside
  // pthread_mutex_lock does not take gofin's stop signal (TSan defers asynchronous signals
  // outside its blocking interceptors), so if the holder was stopped first, the stop never
  // completes. Each try_lock is an interceptor call where the pending stop is delivered.
  struct Guard {
    explicit Guard(std::mutex& m) : m_(m) {
      while (!m_.try_lock()) sched_yield();
    }
    ~Guard() { m_.unlock(); }
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    std::mutex& m_;
  };
  void Log(const Event& e) {
    Guard lock(mu);
    events.push_back(e);
  }
  void Violation(std::string s) {
    Guard lock(mu);
    violations.push_back(std::move(s));
  }
  std::vector<Event> Take() {
    Guard lock(mu);
    std::vector<Event> out;
    out.swap(events);
    return out;
  }
  std::vector<std::string> TakeViolations() {
    Guard lock(mu);
    std::vector<std::string> out;
    out.swap(violations);
    return out;
  }
};

// Malloc'd, never a GC pointer: the data segment holds no graph pointer.
inline Shared* g_shared = nullptr;

inline Node::~Node() {
  Event e;
  e.kind = Ev::kDtor;
  e.thread = kSweepThread;
  e.x = id;
  e.x_ok = canary == (kCanary ^ id);
  g_shared->Log(e);
  canary = kDeadCanary;
  asm volatile("" : : "r"(this) : "memory");
}

// The behaviour of a registration a finalizer makes (the model derives the same).
inline Reg SpecFor(std::uint64_t seed, std::uint64_t g) {
  const std::uint64_t h = Mix(seed ^ (g * 0x2545F4914F6CDD1DULL));
  Reg r;
  r.g = g;
  r.kind = 0;
  r.res_slot = (h % 4 == 0) ? static_cast<int>((h >> 8) % kResSlots) : -1;
  r.rereg = ((h >> 16) % 3) == 0;
  return r;
}

void RegisterFinalizer(Node* x, std::uint64_t id, const Reg& r, Node* cap);

inline void FillSeen(Event& e, Node* x) {
  for (int k = 0; k < kChildren; ++k) {
    void* raw = x->child[k];
    e.child_off[k] = x->child_off[k];
    if (raw == nullptr) continue;
    const Node* c = reinterpret_cast<const Node*>(static_cast<char*>(raw) - x->child_off[k]);
    e.child[k] = c->canary == (kCanary ^ c->id) ? c->id : ~std::uint64_t{0};
  }
}

// The body of every finalizer: record what it saw, then act as its registration says.
inline void RunFinalizer(Node* x, std::uint64_t id, const Reg& r, Node* cap) {
  Shared& s = *g_shared;
  Event e;
  e.kind = Ev::kFinRun;
  e.thread = kFinThread;
  e.x = r.kind == 0 ? id : x->id;
  e.reg.g = r.kind == 0 ? r.g : 0;
  e.x_ok = r.kind == 0 ? NodeOk(x, id) : x->canary == (kCanary ^ x->id);
  FillSeen(e, x);
  if (r.cap != 0) e.cap_ok = NodeOk(cap, r.cap);
  const bool fm = s.final_mode.load();
  e.res_done = (!fm && r.kind == 0 && r.res_slot >= 0) ? r.res_slot : -1;
  std::uint64_t g2 = 0;
  if (!fm && r.kind == 0 && r.rereg) g2 = s.next_g.fetch_add(1);
  e.y = g2;
  // Logged before the resurrection store (which unroots the slot's previous object).
  s.Log(e);
  if (e.res_done >= 0) s.res[static_cast<std::size_t>(e.res_done)] = x;
  if (g2 != 0) {
    const Reg r2 = SpecFor(s.seed, g2);
    try {
      RegisterFinalizer(x, e.x, r2, nullptr);
    } catch (const std::exception& ex) {
      s.Violation(
          Fmt("SetFinalizer inside the finalizer of node %" PRIu64 " threw: %s", e.x, ex.what()));
      return;
    }
    Event re;
    re.kind = Ev::kReg;
    re.thread = kFinThread;
    re.x = e.x;
    re.reg = r2;
    s.Log(re);
  }
  gofin::KeepAlive(x);
}

struct Fin {
  std::uint64_t id;
  Reg reg;
  Node* cap;  // a GC pointer inside the callable: the callable's block keeps it alive
  void operator()(Node* x) const { RunFinalizer(x, id, reg, cap); }
};

inline void FinPlain(Node* x) { RunFinalizer(x, 0, Reg{0, 1}, nullptr); }

inline void RegisterFinalizer(Node* x, std::uint64_t id, const Reg& r, Node* cap) {
  switch (r.kind) {
    case 1:
      gofin::SetFinalizer(x, &FinPlain);
      break;
    case 2:
      gofin::SetFinalizer(x, [](const Node* n) {
        RunFinalizer(const_cast<Node*>(n), 0, Reg{0, 2}, nullptr);
      });
      break;
    case 3:
      gofin::SetFinalizer(x, [](void* p) {
        RunFinalizer(static_cast<Node*>(p), 0, Reg{0, 3}, nullptr);
      });
      break;
    default:
      gofin::SetFinalizer(x, Fin{id, r, cap});
      break;
  }
}

// The body of every cleanup (they run concurrently on the cleanup threads): record which
// cleanup ran and whether its argument node was intact. x: the object's id (0 for the plain
// function, which only gets the cleanup number); arg: a pointer aoff bytes into node aid.
inline void RunCleanup(std::uint64_t c, std::uint64_t x, const char* arg, std::uint64_t aid,
                       std::uint32_t aoff) {
  Event e;
  e.kind = Ev::kClnRun;
  e.thread = kClnThread;
  e.x = x;
  e.c = c;
  e.arg = aid;
  if (aid != 0) e.cap_ok = NodeOk(reinterpret_cast<const Node*>(arg - aoff), aid);
  g_shared->Log(e);
}

// Callables of AddCleanup: they hold integers only (ids, not pointers: a callable that
// closes over its object is misuse).
struct ClnInt {
  std::uint64_t x;
  void operator()(std::uint64_t c) const { RunCleanup(c, x, nullptr, 0, 0); }
};
inline void ClnPlain(std::uint64_t c) { RunCleanup(c, 0, nullptr, 0, 0); }
struct ClnArg {
  std::uint64_t c, x, aid;
  std::uint32_t aoff;
  void operator()(char* a) const { RunCleanup(c, x, a, aid, aoff); }
};

// Finalizers first (they may drop objects with destructors, never the other way round), then
// cleanups, then destructors; again until all three are quiet at once.
inline bool Drain(std::chrono::seconds limit = std::chrono::seconds(120)) {
  using gofin::testing::BlockUntilEmptyCleanupQueue;
  using gofin::testing::BlockUntilEmptyDestructorQueue;
  using gofin::testing::BlockUntilEmptyFinalizerQueue;
  for (int round = 0; round < 16; ++round) {
    if (!BlockUntilEmptyFinalizerQueue(limit) || !BlockUntilEmptyCleanupQueue(limit) ||
        !BlockUntilEmptyDestructorQueue(limit))
      return false;
    const std::chrono::nanoseconds now{0};
    if (BlockUntilEmptyFinalizerQueue(now) && BlockUntilEmptyCleanupQueue(now) &&
        BlockUntilEmptyDestructorQueue(now))
      return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

struct Edge {
  std::uint64_t id = 0;
  std::uint32_t off = 0;
  bool operator==(const Edge&) const = default;
};

struct NState {
  Edge child[kChildren];
  Reg reg;
  int size_kind = 0;
  std::vector<std::uint64_t> clns;  // numbers of its cleanups that are set or stopped
};

// A cleanup: set (or queued with its object alive in the log), stopped, or pending (its
// object's destructor is in the log, its run not yet). Erased when it runs.
enum class ClnSt : std::uint8_t { kSet, kStopped, kPending };
struct Cln {
  std::uint64_t x = 0;
  std::uint64_t arg = 0;  // argument node, marked while set or pending; 0: an integer
  ClnSt st = ClnSt::kSet;
};

// A weak slot: the node (and offset) of its weak pointer; cleared once the model saw the
// object's finalizer run or its destructor.
struct WeakEnt {
  std::uint64_t id = 0;
  std::uint32_t off = 0;
  bool cleared = false;
};

class Model {
 public:
  std::unordered_map<std::uint64_t, NState> alive;  // allocated, not destroyed
  std::unordered_set<std::uint64_t> dead;           // destroyed since the last final drain
  std::unordered_set<std::uint64_t> frozen;         // kept forever (finalizer cycles)
  std::uint64_t watermark = 0;                      // ids below it are dead or frozen
  std::vector<std::uint64_t> roots;
  std::vector<std::uint64_t> res;
  std::unordered_map<std::uint64_t, Cln> cleanups;  // by cleanup number
  std::vector<WeakEnt> weak;                        // kWeakSlots
  bool final_mode = false;
  std::uint64_t seed = 0;
  std::vector<std::string> errors;
  std::string where;  // context for messages
  std::uint64_t finalizers_run = 0, destructors_run = 0;
  std::uint64_t cleanups_run = 0, weak_checks = 0;
  std::uint64_t exact_cycles = 0;  // ExactCycle calls so far
  // For failure messages: the last cleanup whose argument each node was, and what became of
  // it ('s' set, 'p' stopped, 'r' ran) at which exact cycle. Cleared by a final drain.
  struct ArgNote {
    std::uint64_t c = 0, x = 0, at = 0;
    char how = 's';
  };
  std::unordered_map<std::uint64_t, ArgNote> arg_notes;

  Model(int nroots, std::uint64_t s)
      : roots(static_cast<std::size_t>(nroots)), res(kResSlots), weak(kWeakSlots), seed(s) {}

  void Fail(const std::string& msg) {
    if (errors.size() < 50) errors.push_back(where + ": " + msg);
  }

  // --- mutation helpers (planner and replay) ---
  // Each keeps the marked set (see Marked) current: an addition that can only grow it marks
  // from the new target at once, a removal that may shrink it only makes it stale.
  void AddNode(std::uint64_t id, int sk) {
    // A new node has no edges and no finalizer: it marks nothing.
    alive[id].size_kind = sk;
  }
  void SetEdge(std::uint64_t p, int k, Edge e) {
    NState& n = alive[p];
    const std::uint64_t old = n.child[k].id;
    n.child[k] = e;
    ++paths_version_;
    if (old == e.id) return;
    // The edge counts if p is marked, or p has a finalizer and the edge leaves p.
    const bool marked = marked_.count(p) != 0;
    const bool regd = n.reg.g != 0;
    if (old != 0 && (marked || (regd && old != p))) stale_ = true;
    if (e.id != 0 && (marked || (regd && e.id != p))) MarkFrom(e.id);
  }
  void SetRoot(int slot, std::uint64_t id) {
    std::uint64_t& r = roots[static_cast<std::size_t>(slot)];
    if (r != 0 && r != id) stale_ = true;
    r = id;
    ++paths_version_;
    MarkFrom(id);
  }
  void SetRes(int slot, std::uint64_t id) {
    std::uint64_t& r = res[static_cast<std::size_t>(slot)];
    if (r != 0 && r != id) stale_ = true;
    r = id;
    MarkFrom(id);
  }
  void SetReg(std::uint64_t id, const Reg& r) {
    NState& n = alive[id];
    const Reg old = n.reg;
    n.reg = r;
    if (old.g != 0 && (r.g == 0 || (old.cap != 0 && old.cap != r.cap))) stale_ = true;
    if (r.g == 0) return;
    for (const Edge& e : n.child)
      if (e.id != id) MarkFrom(e.id);
    MarkFrom(r.cap);
  }
  void AddCln(std::uint64_t c, std::uint64_t x, std::uint64_t arg) {
    cleanups[c] = Cln{x, arg, ClnSt::kSet};
    alive[x].clns.push_back(c);
    if (arg != 0) arg_notes[arg] = ArgNote{c, x, exact_cycles, 's'};
    MarkFrom(arg);
  }
  void StopCln(std::uint64_t c) {  // a set cleanup stops; anything else stays as it is
    auto it = cleanups.find(c);
    if (it == cleanups.end() || it->second.st != ClnSt::kSet) return;
    it->second.st = ClnSt::kStopped;
    if (it->second.arg != 0) stale_ = true;
    NoteArg(it->second.arg, c, 'p');
  }
  void NoteArg(std::uint64_t arg, std::uint64_t c, char how) {
    auto it = arg_notes.find(arg);
    if (it == arg_notes.end() || it->second.c != c) return;
    it->second.how = how;
    it->second.at = exact_cycles;
  }
  void SetWeak(int w, std::uint64_t id, std::uint32_t off) {
    weak[static_cast<std::size_t>(w)] = WeakEnt{id, off, false};
  }
  void ClearWeak(std::uint64_t id) {
    for (WeakEnt& w : weak)
      if (w.id == id) w.cleared = true;
  }
  // The argument nodes of x's set cleanups.
  template <class F>
  void ForArgs(const NState& n, F&& f) const {
    for (std::uint64_t c : n.clns) {
      auto it = cleanups.find(c);
      if (it != cleanups.end() && it->second.st == ClnSt::kSet && it->second.arg != 0)
        f(it->second.arg);
    }
  }

  // After a change to alive, roots or res that bypassed the helpers above.
  void Invalidate() {
    stale_ = true;
    ++paths_version_;
  }
  // Changes whenever a path from a root may have changed (see Planner::Refresh).
  std::uint64_t PathsVersion() const { return paths_version_; }
  bool Registered(std::uint64_t id) const {
    auto it = alive.find(id);
    return it != alive.end() && it->second.reg.g != 0;
  }

  // Go's mark: from the roots, the resurrection roots, the argument of every cleanup that is
  // set or queued, and for every object with a finalizer what it references and what its
  // callable captured (not the object itself). Ids that are
  // referenced but not allocated (only after a violation) are in the set and mark nothing.
  const std::unordered_set<std::uint64_t>& Marked() {
    if (stale_) Recompute();
    return marked_;
  }
  // Marked().count(id), recomputing the set only when the answer may have changed. Between
  // recomputations marked_ is a superset of the marked set (additions are applied at once,
  // removals only make it stale), so an id outside it is unmarked: that is the answer for
  // every finalizer and destructor that runs rightly, and a cycle's replay costs no
  // recomputation per event (one per event made the fuzzer quadratic in the garbage).
  bool IsMarked(std::uint64_t id) {
    if (marked_.count(id) == 0) return false;
    if (stale_) Recompute();
    return marked_.count(id) != 0;
  }

  // Why the model thinks id is live (for failure messages).
  std::string Explain(std::uint64_t id) {
    std::string s;
    for (std::size_t i = 0; i < roots.size(); ++i)
      if (roots[i] == id) s += Fmt(" root[%zu]", i);
    for (std::size_t i = 0; i < res.size(); ++i)
      if (res[i] == id) s += Fmt(" res[%zu]", i);
    const auto& m = Marked();
    for (auto& [pid, n] : alive) {
      for (int k = 0; k < kChildren; ++k) {
        if (n.child[k].id != id) continue;
        s += Fmt(" parent %" PRIu64 "%s%s", pid, m.count(pid) ? "(marked)" : "(unmarked)",
                 n.reg.g ? "(has finalizer)" : "");
      }
      if (n.reg.g && n.reg.cap == id) s += Fmt(" captured-by-finalizer-of %" PRIu64, pid);
    }
    for (auto& [c, r] : cleanups) {
      if (r.arg == id && r.st != ClnSt::kStopped)
        s += Fmt(" argument-of-cleanup %" PRIu64 "-of-node %" PRIu64 "%s", c, r.x,
                 r.st == ClnSt::kPending ? "(queued)" : "");
    }
    auto it = alive.find(id);
    if (it != alive.end()) {
      const NState& n = it->second;
      s += Fmt(" | self: reg g=%" PRIu64 " kind=%d cap=%" PRIu64 " children=", n.reg.g, n.reg.kind,
               n.reg.cap);
      for (const Edge& e : n.child) s += Fmt("%" PRIu64 "+%u ", e.id, e.off);
      for (std::uint64_t c : n.clns) {
        auto ct = cleanups.find(c);
        if (ct == cleanups.end()) continue;
        s += Fmt(" cleanup %" PRIu64 "(%s, arg %" PRIu64 ")", c,
                 ct->second.st == ClnSt::kSet ? "set" : "stopped", ct->second.arg);
      }
    }
    for (std::size_t w = 0; w < weak.size(); ++w) {
      if (weak[w].id == id)
        s += Fmt(" weak[%zu]+%u%s", w, weak[w].off, weak[w].cleared ? "(cleared)" : "");
    }
    auto an = arg_notes.find(id);
    if (an != arg_notes.end()) {
      const ArgNote& a = an->second;
      s += Fmt(" | last the argument of cleanup %" PRIu64 " of node %" PRIu64
               ", which %s at exact cycle %" PRIu64 " (now %" PRIu64 ")",
               a.c, a.x,
               a.how == 'r'   ? "ran"
               : a.how == 'p' ? "was stopped"
                              : "was added",
               a.at, exact_cycles);
    }
    return s.empty() ? std::string(" (nothing references it)") : s;
  }

  // --- replay of one log entry, with the safety checks ---
  void Apply(const Event& e) {
    switch (e.kind) {
      case Ev::kAlloc:
        if (alive.count(e.x) || dead.count(e.x) || e.x < watermark)
          Fail(Fmt("id %" PRIu64 " allocated twice", e.x));
        AddNode(e.x, e.size_kind);
        break;
      case Ev::kLink:
        if (Need(e.x, "link parent") && Need(e.y, "link target"))
          SetEdge(e.x, static_cast<int>(e.k), Edge{e.y, e.off});
        break;
      case Ev::kUnlink:
        if (Need(e.x, "unlink parent")) SetEdge(e.x, static_cast<int>(e.k), Edge{});
        break;
      case Ev::kRoot:
        if (Need(e.y, "root target")) SetRoot(static_cast<int>(e.x), e.y);
        break;
      case Ev::kUnroot:
        SetRoot(static_cast<int>(e.x), 0);
        break;
      case Ev::kReg:
        if (!Need(e.x, "SetFinalizer target")) break;
        if (alive[e.x].reg.g != 0) {
          Fail(Fmt("SetFinalizer on node %" PRIu64 " succeeded while registration g=%" PRIu64
                   " was still set",
                   e.x, alive[e.x].reg.g));
        }
        if (e.thread == kFinThread && !(e.reg == SpecFor(seed, e.reg.g)))
          Fail("re-registration spec mismatch");
        if (e.reg.cap != 0) Need(e.reg.cap, "captured object");
        SetReg(e.x, e.reg);
        break;
      case Ev::kUnreg:
        if (!Need(e.x, "SetFinalizer(nil) target")) break;
        if (alive[e.x].reg.g != e.reg.g) {
          Fail(Fmt("finalizer registration g=%" PRIu64 " of node %" PRIu64
                   " was gone (ran or cleared) while a mutator still held the object",
                   e.reg.g, e.x));
        }
        SetReg(e.x, Reg{});
        break;
      case Ev::kFinRun:
        FinRun(e);
        break;
      case Ev::kDtor:
        Dtor(e);
        break;
      case Ev::kClnAdd:
        if (!Need(e.x, "AddCleanup target") || (e.arg != 0 && !Need(e.arg, "cleanup argument")))
          break;
        if (cleanups.count(e.c)) Fail(Fmt("cleanup number %" PRIu64 " added twice", e.c));
        AddCln(e.c, e.x, e.arg);
        break;
      case Ev::kClnStop: {
        auto it = cleanups.find(e.c);
        if (it == cleanups.end() || it->second.st == ClnSt::kPending) {
          Fail(Fmt("cleanup %" PRIu64 " %s while a mutator still held its object", e.c,
                   it == cleanups.end() ? "ran" : "was queued (its object destroyed)"));
          break;
        }
        StopCln(e.c);
        break;
      }
      case Ev::kClnRun:
        ClnRun(e);
        break;
      case Ev::kWeakMake:
        if (Need(e.x, "weak::Make target")) SetWeak(static_cast<int>(e.k), e.x, e.off);
        break;
      case Ev::kWeakVal:
        WeakVal(e);
        break;
    }
  }

  void ClnRun(const Event& e) {
    ++cleanups_run;
    auto it = cleanups.find(e.c);
    if (it == cleanups.end()) {
      Fail(
          Fmt("cleanup %" PRIu64 " (node %" PRIu64
              ") ran after Stop(), or twice, or was never added, or belongs to a node kept forever",
              e.c, e.x));
      return;
    }
    const Cln r = it->second;
    if (e.x != 0 && e.x != r.x)
      Fail(Fmt("cleanup %" PRIu64 " of node %" PRIu64 " ran as node %" PRIu64 "'s", e.c, r.x, e.x));
    if (!e.cap_ok)
      Fail(Fmt("the argument node %" PRIu64 " of cleanup %" PRIu64 " (node %" PRIu64
               ") was freed or corrupt when it ran",
               r.arg, e.c, r.x));
    if (r.st == ClnSt::kStopped)
      Fail(Fmt("stopped cleanup %" PRIu64 " of node %" PRIu64 " ran", e.c, r.x));
    if (r.st == ClnSt::kSet) {  // its object's destructor is not in the log yet
      auto n = alive.find(r.x);
      if (n == alive.end()) {
        Fail(Fmt("cleanup %" PRIu64 " ran for node %" PRIu64 ", which the model lost", e.c, r.x));
      } else {
        if (n->second.reg.g != 0) {
          Fail(Fmt("cleanup %" PRIu64 " of node %" PRIu64 " ran while its finalizer g=%" PRIu64
                   " was set or queued (the finalizer must run first, and the object be freed "
                   "by a later cycle)",
                   e.c, r.x, n->second.reg.g));
        }
        if (IsMarked(r.x)) {
          Fail(Fmt("cleanup %" PRIu64 " ran for node %" PRIu64 " that is still reachable:%s", e.c,
                   r.x, Explain(r.x).c_str()));
        }
        auto& v = n->second.clns;
        v.erase(std::remove(v.begin(), v.end(), e.c), v.end());
      }
    }
    if (r.arg != 0 && r.st != ClnSt::kStopped) stale_ = true;
    NoteArg(r.arg, e.c, 'r');
    cleanups.erase(e.c);
  }

  void WeakVal(const Event& e) {
    ++weak_checks;
    const WeakEnt& w = weak[e.k];
    if (w.id != e.x || w.off != e.off) {
      Fail(Fmt("harness: weak slot %u holds node %" PRIu64 "+%u, the mutator read %" PRIu64 "+%u",
               e.k, w.id, w.off, e.x, e.off));
      return;
    }
    if (e.y != 0) {
      if (!e.x_ok)
        Fail(Fmt("weak Value() of node %" PRIu64 " returned a freed or corrupt object", e.x));
      if (w.cleared)
        Fail(Fmt("weak Value() of node %" PRIu64
                 " is non-nil after its finalizer ran or it was destroyed",
                 e.x));
      else if (!alive.count(e.x) && !frozen.count(e.x))
        Fail(Fmt("weak Value() of destroyed node %" PRIu64 " is non-nil", e.x));
    } else if (!w.cleared && (frozen.count(e.x) || IsMarked(e.x))) {
      Fail(Fmt("weak Value() of node %" PRIu64 " is nil while the node is reachable:%s", e.x,
               frozen.count(e.x) ? " kept forever by a finalizer cycle" : Explain(e.x).c_str()));
    }
  }

  void FinRun(const Event& e) {
    ++finalizers_run;
    if (frozen.count(e.x)) {
      Fail(Fmt("finalizer ran for node %" PRIu64 ", which is kept forever by a finalizer cycle",
               e.x));
      return;
    }
    auto it = alive.find(e.x);
    if (it == alive.end()) {
      Fail(Fmt("finalizer ran for node %" PRIu64 " that was %s", e.x,
               dead.count(e.x) || e.x < watermark ? "already destroyed"
                                                  : "never allocated (corrupt id?)"));
      return;
    }
    NState& n = it->second;
    if (e.reg.g == 0) {
      if (n.reg.g == 0 || n.reg.kind == 0) {
        Fail(Fmt("stateless finalizer ran for node %" PRIu64 " whose registration is g=%" PRIu64
                 " kind=%d",
                 e.x, n.reg.g, n.reg.kind));
      }
    } else if (n.reg.g != e.reg.g) {
      Fail(Fmt("finalizer g=%" PRIu64 " ran for node %" PRIu64
               " whose current registration is g=%" PRIu64
               " (ran twice, ran after removal, or ran while not registered)",
               e.reg.g, e.x, n.reg.g));
    }
    if (!e.x_ok) Fail(Fmt("finalizer of node %" PRIu64 " got an object with a bad id/canary", e.x));
    if (!e.cap_ok)
      Fail(Fmt("object %" PRIu64 " captured by node %" PRIu64 "'s finalizer was freed or corrupt",
               n.reg.cap, e.x));
    if (IsMarked(e.x)) {
      Fail(Fmt("finalizer ran for node %" PRIu64
               " that is still reachable (from roots or from an object with a finalizer):%s",
               e.x, Explain(e.x).c_str()));
    }
    for (int k = 0; k < kChildren; ++k) {
      if (e.child[k] != n.child[k].id || (e.child[k] != 0 && e.child_off[k] != n.child[k].off)) {
        Fail(Fmt("finalizer of node %" PRIu64 " saw child[%d]=%" PRIu64 "+%u, model has %" PRIu64
                 "+%u",
                 e.x, k, e.child[k], e.child_off[k], n.child[k].id, n.child[k].off));
      }
    }
    const bool stateful = n.reg.kind == 0;
    const int want_res = (!final_mode && stateful && n.reg.res_slot >= 0) ? n.reg.res_slot : -1;
    const bool want_rereg = !final_mode && stateful && n.reg.rereg;
    if (e.res_done != want_res || (e.y != 0) != want_rereg) {
      Fail(Fmt("finalizer of node %" PRIu64
               " acted unlike its registration (res %d/%d rereg %d/%d)",
               e.x, e.res_done, want_res, e.y != 0, want_rereg));
    }
    SetReg(e.x, Reg{});
    ClearWeak(e.x);
    if (e.res_done >= 0) SetRes(e.res_done, e.x);
  }

  void Dtor(const Event& e) {
    ++destructors_run;
    if (frozen.count(e.x)) {
      Fail(Fmt("destructor ran for node %" PRIu64 ", which is kept forever by a finalizer cycle",
               e.x));
      return;
    }
    auto it = alive.find(e.x);
    if (it == alive.end()) {
      Fail(Fmt("destructor ran for node %" PRIu64 " that was %s", e.x,
               dead.count(e.x) || e.x < watermark ? "already destroyed (destructor ran twice)"
                                                  : "never allocated (corrupt id?)"));
      return;
    }
    if (!e.x_ok) Fail(Fmt("destructor of node %" PRIu64 " found a corrupt canary", e.x));
    const bool was_registered = it->second.reg.g != 0;
    if (was_registered) {
      Fail(Fmt("node %" PRIu64 " destroyed while its finalizer g=%" PRIu64
               " was still set (or queued)",
               e.x, it->second.reg.g));
    }
    const bool was_marked = IsMarked(e.x);
    if (was_marked) Fail(Fmt("reachable node %" PRIu64 " destroyed:%s", e.x, Explain(e.x).c_str()));
    // An unmarked, unregistered node marks nothing: the marked set stays as it is (its set
    // cleanups become queued ones and go on marking their arguments).
    if (was_registered || marked_.count(e.x) != 0) stale_ = true;
    ++paths_version_;
    for (std::uint64_t c : it->second.clns) {
      auto ct = cleanups.find(c);
      if (ct == cleanups.end()) continue;
      if (ct->second.st == ClnSt::kSet) {
        ct->second.st = ClnSt::kPending;
      } else if (ct->second.st == ClnSt::kStopped) {
        cleanups.erase(ct);
      }
    }
    ClearWeak(e.x);
    alive.erase(it);
    dead.insert(e.x);
  }

  bool Need(std::uint64_t id, const char* what) {
    if (alive.count(id)) return true;
    Fail(Fmt("%s: node %" PRIu64 " is %s", what, id,
             frozen.count(id)                     ? "frozen"
             : (dead.count(id) || id < watermark) ? "destroyed"
                                                  : "unknown"));
    return false;
  }

  void ApplyAll(const std::vector<Event>& evs) {
    for (const Event& e : evs) Apply(e);
  }

  // --- exact prediction ---
  struct Prediction {
    std::set<std::uint64_t> fin;   // finalizers that must be queued (and run)
    std::set<std::uint64_t> dtor;  // objects that must be freed
    std::set<std::uint64_t> cln;   // cleanups that must be queued (and run)
  };
  Prediction Predict() {
    Prediction p;
    const auto& m = Marked();
    for (auto& [id, n] : alive) {
      if (m.count(id)) continue;
      (n.reg.g != 0 ? p.fin : p.dtor).insert(id);
      if (n.reg.g != 0) continue;
      for (std::uint64_t c : n.clns) {
        auto it = cleanups.find(c);
        if (it != cleanups.end() && it->second.st == ClnSt::kSet) p.cln.insert(c);
      }
    }
    for (auto& [c, r] : cleanups)  // queued before (none once the queues are drained)
      if (r.st == ClnSt::kPending) p.cln.insert(c);
    return p;
  }

  // With every root gone: the objects no number of cycles frees (reachable in >= 0 steps from a
  // registered object that reaches itself in >= 1), and the longest chain of other registered
  // objects (each cycle finalizes one link of a chain).
  //
  // The edges that keep things alive once no root is left: the children of every object, plus
  // the capture of an object's own registered finalizer, plus the argument of each of its set
  // cleanups (a root while the object lives; the object is stuck iff that argument reaches
  // it back, i.e. lies in its component; each such object is one more link of a chain: the
  // argument goes in the cycle after the object's). A registered object's own pointers
  // into itself are no path back to it (the collector skips them when it marks what the
  // object references); its callable's capture of itself is one (the callable is another
  // object). So a registered object reaches itself iff it captures itself or lies in a
  // strongly connected component of two or more objects; the chains are paths through the
  // other components, which form a DAG. Linear in the graph (the fuzzer's drains see a few
  // thousand nodes; one reachability set per registered object took 100 ms and more).
  struct Fixpoint {
    std::unordered_set<std::uint64_t> stuck;
    int longest_chain = 0;
  };
  Fixpoint ComputeFixpoint() {
    Fixpoint f;
    const std::size_t n = alive.size();
    std::vector<const NState*> node;
    std::vector<std::uint64_t> ids;
    std::unordered_map<std::uint64_t, int> index;
    node.reserve(n);
    ids.reserve(n);
    for (auto& [id, st] : alive) {
      index.emplace(id, static_cast<int>(ids.size()));
      ids.push_back(id);
      node.push_back(&st);
    }
    // Edges without self-loops (a self-capture is noted apart).
    std::vector<std::vector<int>> succ(n);
    std::vector<char> self_cap(n, 0), arg_cln(n, 0);
    auto add = [&](std::size_t v, std::uint64_t to) {
      if (to == 0 || to == ids[v]) return;
      auto it = index.find(to);
      if (it != index.end()) succ[v].push_back(it->second);
    };
    for (std::size_t v = 0; v < n; ++v) {
      for (const Edge& e : node[v]->child) add(v, e.id);
      ForArgs(*node[v], [&](std::uint64_t a) {
        add(v, a);
        arg_cln[v] = 1;
      });
      const Reg& r = node[v]->reg;
      if (r.g == 0) continue;
      add(v, r.cap);
      if (r.cap == ids[v]) self_cap[v] = 1;
    }
    // Tarjan's strongly connected components, iteratively; components come out sinks first
    // (every edge between components goes to a lower number).
    std::vector<int> order(n, -1), low(n, 0), comp(n, -1), comp_size, stack;
    std::vector<std::pair<int, std::size_t>> call;  // node, next edge
    int counter = 0;
    for (std::size_t root = 0; root < n; ++root) {
      if (order[root] >= 0) continue;
      auto enter = [&](int v) {
        order[static_cast<std::size_t>(v)] = low[static_cast<std::size_t>(v)] = counter++;
        stack.push_back(v);
        call.emplace_back(v, 0);
      };
      enter(static_cast<int>(root));
      while (!call.empty()) {
        const auto v = static_cast<std::size_t>(call.back().first);
        const std::size_t pos = call.back().second;
        if (pos < succ[v].size()) {
          ++call.back().second;
          const int w = succ[v][pos];
          const auto wi = static_cast<std::size_t>(w);
          if (order[wi] < 0) {
            enter(w);
          } else if (comp[wi] < 0) {  // on the stack
            low[v] = std::min(low[v], order[wi]);
          }
          continue;
        }
        call.pop_back();
        if (!call.empty()) {
          const auto u = static_cast<std::size_t>(call.back().first);
          low[u] = std::min(low[u], low[v]);
        }
        if (low[v] != order[v]) continue;
        const int c = static_cast<int>(comp_size.size());
        int size = 0;
        for (;;) {
          const int w = stack.back();
          stack.pop_back();
          comp[static_cast<std::size_t>(w)] = c;
          ++size;
          if (static_cast<std::size_t>(w) == v) break;
        }
        comp_size.push_back(size);
      }
    }
    // Stuck: everything reachable from a registered object that reaches itself.
    std::vector<char> stuck(n, 0);
    std::vector<int> todo;
    for (std::size_t v = 0; v < n; ++v) {
      bool seed =
          node[v]->reg.g != 0 && (self_cap[v] || comp_size[static_cast<std::size_t>(comp[v])] > 1);
      if (!seed && arg_cln[v]) {
        ForArgs(*node[v], [&](std::uint64_t a) {
          auto it = index.find(a);
          if (it != index.end() && comp[static_cast<std::size_t>(it->second)] == comp[v])
            seed = true;
        });
      }
      if (seed) {
        stuck[v] = 1;
        todo.push_back(static_cast<int>(v));
      }
    }
    while (!todo.empty()) {
      const auto v = static_cast<std::size_t>(todo.back());
      todo.pop_back();
      for (int w : succ[v]) {
        if (!stuck[static_cast<std::size_t>(w)]) {
          stuck[static_cast<std::size_t>(w)] = 1;
          todo.push_back(w);
        }
      }
    }
    for (std::size_t v = 0; v < n; ++v)
      if (stuck[v]) f.stuck.insert(ids[v]);
    // Longest chain: the most registered objects on a path through the components that are
    // not stuck (a component is stuck as a whole, and so is everything after a stuck one; a
    // registered object outside the stuck ones is a component of its own), sources first.
    const std::size_t ncomp = comp_size.size();
    std::vector<std::vector<int>> members(ncomp);
    for (std::size_t v = 0; v < n; ++v)
      members[static_cast<std::size_t>(comp[v])].push_back(static_cast<int>(v));
    std::vector<int> in(ncomp, 0);
    for (std::size_t c = ncomp; c-- > 0;) {
      if (stuck[static_cast<std::size_t>(members[c][0])]) continue;
      int out = in[c];
      for (int v : members[c]) {
        out += node[static_cast<std::size_t>(v)]->reg.g != 0 ? 1 : 0;
        out += arg_cln[static_cast<std::size_t>(v)];
      }
      f.longest_chain = std::max(f.longest_chain, out);
      for (int v : members[c]) {
        for (int w : succ[static_cast<std::size_t>(v)]) {
          const auto d = static_cast<std::size_t>(comp[static_cast<std::size_t>(w)]);
          if (d != c) in[d] = std::max(in[d], out);
        }
      }
    }
    return f;
  }

 private:
  // Adds id and everything it reaches to marked_.
  void MarkFrom(std::uint64_t id) {
    if (id == 0 || !marked_.insert(id).second) return;
    mark_stack_.push_back(id);
    while (!mark_stack_.empty()) {
      const std::uint64_t x = mark_stack_.back();
      mark_stack_.pop_back();
      auto it = alive.find(x);
      if (it == alive.end()) continue;
      for (const Edge& e : it->second.child)
        if (e.id != 0 && marked_.insert(e.id).second) mark_stack_.push_back(e.id);
    }
  }
  void Recompute() {
    stale_ = false;
    marked_.clear();
    for (auto id : roots) MarkFrom(id);
    for (auto id : res) MarkFrom(id);
    for (auto& [c, r] : cleanups)
      if (r.st != ClnSt::kStopped) MarkFrom(r.arg);
    for (auto& [id, n] : alive) {
      if (n.reg.g == 0) continue;
      // Its pointers into itself do not keep it alive (API.md).
      for (const Edge& e : n.child)
        if (e.id != id) MarkFrom(e.id);
      MarkFrom(n.reg.cap);
    }
  }

  std::unordered_set<std::uint64_t> marked_;  // see IsMarked
  bool stale_ = false;                        // marked_ may hold more than the marked set
  std::uint64_t paths_version_ = 0;
  std::vector<std::uint64_t> mark_stack_;
};

// ---------------------------------------------------------------------------------------------
// Checker procedures (the calling thread holds no needed GC pointer on its stack)
// ---------------------------------------------------------------------------------------------

inline void CollectViolations(Model& m) {
  for (auto& v : g_shared->TakeViolations()) m.Fail(v);
}

inline std::string SetDiff(const std::set<std::uint64_t>& a, const std::set<std::uint64_t>& b) {
  std::string s;
  int n = 0;
  for (auto x : a) {
    if (b.count(x)) continue;
    if (n++ < 12) s += Fmt(" %" PRIu64, x);
  }
  if (n > 12) s += Fmt(" ... (%d in all)", n);
  return s;
}

// Every weak slot against the model, exactly (the queues are drained and replayed): Value()
// is non-nil iff the entry is not cleared, and then the node is intact.
inline void CheckWeak(Model& m) {
  Shared& s = *g_shared;
  for (int w = 0; w < kWeakSlots; ++w) {
    const WeakEnt& ent = m.weak[static_cast<std::size_t>(w)];
    if (ent.id == 0) continue;
    ++m.weak_checks;
    void* v = s.weak[w].Value();
    if ((v != nullptr) == !ent.cleared) {
      if (v != nullptr &&
          !NodeOk(reinterpret_cast<const Node*>(static_cast<char*>(v) - ent.off), ent.id))
        m.Fail(Fmt("weak slot %d: Value() of node %" PRIu64 " returned a freed or corrupt object",
                   w, ent.id));
      continue;
    }
    m.Fail(Fmt("weak slot %d: Value() of node %" PRIu64 "+%u is %s, the model says %s%s", w, ent.id,
               ent.off, v ? "non-nil" : "nil",
               ent.cleared ? "cleared (finalizer ran or destroyed)" : "reachable:",
               ent.cleared                 ? ""
               : m.frozen.count(ent.id)    ? " kept forever by a finalizer cycle"
               : m.alive.count(ent.id) > 0 ? m.Explain(ent.id).c_str()
                                           : " (not in the model)"));
  }
}

// Stop() on the handle of every cleanup that ran or was stopped on a destroyed node: Go says
// it is harmless (the object's memory may hold another object with cleanups by now; the next
// exact cycle would see one of theirs go missing).
inline void StopFinished(Model& m) {
  Shared& s = *g_shared;
  std::vector<gofin::Cleanup> done;
  {
    Shared::Guard lock(s.mu);
    for (auto it = s.cln_handles.begin(); it != s.cln_handles.end();) {
      if (m.cleanups.count(it->first)) {
        ++it;
        continue;
      }
      done.push_back(it->second);
      it = s.cln_handles.erase(it);
    }
  }
  for (gofin::Cleanup& h : done) h.Stop();
}

// One collection with an exact prediction: which finalizers run and which destructors.
inline void ExactCycle(Model& m) {
  // Whatever earlier (non-exact) collections queued must have run and been replayed first.
  if (!Drain()) m.Fail("the finalizer queue did not drain within 120 s before an exact cycle");
  m.ApplyAll(g_shared->Take());
  ++m.exact_cycles;
  const Model::Prediction want = m.Predict();
  gofin::testing::GC(gofin::testing::StackState::kNoHeapPointers);
  if (!Drain()) m.Fail("the finalizer queue did not drain within 120 s");
  const std::vector<Event> evs = g_shared->Take();
  std::set<std::uint64_t> fin, dtor, cln;
  for (const Event& e : evs) {
    if (e.kind == Ev::kFinRun) fin.insert(e.x);
    if (e.kind == Ev::kDtor) dtor.insert(e.x);
    if (e.kind == Ev::kClnRun) cln.insert(e.c);
  }
  if (cln != want.cln) {
    std::string s = "exact cycle: cleanups differ from the model.";
    const std::string missing = SetDiff(want.cln, cln), extra = SetDiff(cln, want.cln);
    if (!missing.empty()) s += " Expected but did not run:" + missing;
    if (!extra.empty()) s += " Ran but the model says not now:" + extra;
    for (auto c : cln) {
      if (want.cln.count(c)) continue;
      auto it = m.cleanups.find(c);
      if (it == m.cleanups.end()) break;
      const auto n = m.alive.find(it->second.x);
      s += Fmt(" [first extra %" PRIu64 ": node %" PRIu64 " %s, state %d, finalizer g=%" PRIu64
               ":%s]",
               c, it->second.x, m.Marked().count(it->second.x) ? "marked" : "unmarked",
               static_cast<int>(it->second.st), n == m.alive.end() ? 0 : n->second.reg.g,
               m.Explain(it->second.x).c_str());
      break;
    }
    m.Fail(s);
  }
  if (fin != want.fin) {
    std::string s = "exact cycle: finalizers differ from the model.";
    const std::string missing = SetDiff(want.fin, fin), extra = SetDiff(fin, want.fin);
    if (!missing.empty()) s += " Expected but did not run:" + missing;
    if (!extra.empty()) s += " Ran but the model says reachable:" + extra;
    for (auto id : want.fin) {
      if (!fin.count(id)) {
        s += Fmt(" [first missing %" PRIu64 ":%s]", id, m.Explain(id).c_str());
        break;
      }
    }
    m.Fail(s);
  }
  if (dtor != want.dtor) {
    std::string s = "exact cycle: destructors differ from the model.";
    const std::string missing = SetDiff(want.dtor, dtor), extra = SetDiff(dtor, want.dtor);
    if (!missing.empty()) s += " Unreachable but not freed:" + missing;
    if (!extra.empty()) s += " Freed but the model says live:" + extra;
    for (auto id : want.dtor) {
      if (!dtor.count(id)) {
        s += Fmt(" [first not freed %" PRIu64 ":%s]", id, m.Explain(id).c_str());
        break;
      }
    }
    m.Fail(s);
  }
  m.ApplyAll(evs);
  CollectViolations(m);
  CheckWeak(m);
  StopFinished(m);
}

// Walks the real graph from every root and compares it with the model: ids, canaries, edges.
inline void CheckHeapGraph(Model& m) {
  Shared& s = *g_shared;
  std::unordered_set<std::uint64_t> seen;
  std::vector<std::pair<const Node*, std::uint64_t>> stack;
  auto start = [&](const Node* p, std::uint64_t want, const char* what, std::size_t i) {
    if (want == 0) {
      if (p != nullptr) m.Fail(Fmt("%s[%zu] holds a node, model says empty", what, i));
      return;
    }
    stack.emplace_back(p, want);
  };
  for (std::size_t i = 0; i < s.roots.size(); ++i) start(s.roots[i].get(), m.roots[i], "root", i);
  for (std::size_t i = 0; i < s.res.size(); ++i) start(s.res[i].get(), m.res[i], "res", i);
  while (!stack.empty()) {
    auto [p, id] = stack.back();
    stack.pop_back();
    if (!seen.insert(id).second) continue;
    auto it = m.alive.find(id);
    if (it == m.alive.end()) {
      m.Fail(Fmt("graph walk reached node %" PRIu64 ", which the model says is gone", id));
      continue;
    }
    if (!NodeOk(p, id)) {
      m.Fail(Fmt("live node %" PRIu64 " is corrupt or freed (id %" PRIu64 ", canary %#" PRIx64 ")",
                 id, p ? p->id : 0, p ? p->canary : 0));
      continue;
    }
    for (int k = 0; k < kChildren; ++k) {
      const Edge& want = it->second.child[k];
      void* raw = p->child[k];
      if (want.id == 0) {
        if (raw != nullptr)
          m.Fail(Fmt("node %" PRIu64 " child[%d] is set, model says empty", id, k));
        continue;
      }
      if (raw == nullptr || p->child_off[k] != want.off) {
        m.Fail(Fmt("node %" PRIu64 " child[%d] lost or changed its edge", id, k));
        continue;
      }
      stack.emplace_back(reinterpret_cast<const Node*>(static_cast<char*>(raw) - want.off),
                         want.id);
    }
  }
}

// Stops the cleanups of node id whose argument is a node (what may keep it forever).
inline void StopArgCleanups(Model& m, std::uint64_t id) {
  Shared& s = *g_shared;
  auto n = m.alive.find(id);
  if (n == m.alive.end()) return;
  std::vector<std::uint64_t> cs;
  for (std::uint64_t c : n->second.clns) {
    auto it = m.cleanups.find(c);
    if (it != m.cleanups.end() && it->second.st == ClnSt::kSet && it->second.arg != 0)
      cs.push_back(c);
  }
  for (std::uint64_t c : cs) {
    gofin::Cleanup h;
    {
      Shared::Guard lock(s.mu);
      auto it = s.cln_handles.find(c);
      if (it == s.cln_handles.end()) {
        m.Fail(Fmt("harness: no handle for cleanup %" PRIu64, c));
        continue;
      }
      h = it->second;
    }
    h.Stop();
    m.StopCln(c);
  }
}

// Drops every root, turns off resurrection and re-registration, and collects until the model
// says nothing changes any more: every finalizer outside a finalizer cycle must have run within
// (longest chain + 2) cycles and every object outside those cycles must be freed.
//
// The objects of finalizer cycles ("stuck") are kept forever: the model freezes them and any
// later event for one is a failure. They also make every later collection slower: with
// Shared::record_addrs, a drain whose stuck objects would make more than max_frozen frozen
// releases them instead (SetFinalizer(x, nil) on each registered one, which nothing else can
// reach any more), and one more exact cycle must free all of them.
inline int FinalDrain(Model& m, bool (*stop)() = nullptr,
                      std::size_t max_frozen = static_cast<std::size_t>(-1)) {
  Shared& s = *g_shared;
  m.final_mode = true;
  s.final_mode.store(true);
  for (std::size_t i = 0; i < s.roots.size(); ++i) {
    s.roots[i].reset();
    m.SetRoot(static_cast<int>(i), 0);
  }
  for (std::size_t i = 0; i < s.res.size(); ++i) {
    s.res[i].reset();
    m.SetRes(static_cast<int>(i), 0);
  }
  const Model::Fixpoint fp = m.ComputeFixpoint();
  const int bound = fp.longest_chain + 2;
  int cycles = 0;
  for (; cycles < bound && m.errors.empty(); ++cycles) {
    if (stop != nullptr && stop()) break;
    ExactCycle(m);
  }
  if (m.errors.empty() && cycles == bound) {
    for (auto& [id, n] : m.alive) {
      if (!fp.stuck.count(id)) {
        m.Fail(Fmt("after %d cycles with no roots (longest finalizer chain %d) node %" PRIu64
                   " still lives (reg g=%" PRIu64 "):%s",
                   cycles, fp.longest_chain, id, n.reg.g, m.Explain(id).c_str()));
        break;
      }
    }
    for (auto id : fp.stuck) {
      if (!m.alive.count(id)) m.Fail(Fmt("node %" PRIu64 " of a finalizer cycle was freed", id));
    }
    if (m.errors.empty() && s.record_addrs && m.frozen.size() + fp.stuck.size() > max_frozen) {
      // Every node left is stuck and alive (no destructor ran for it, and a node's memory is
      // reused only after its destructor ran): its recorded address is still its own.
      for (auto id : fp.stuck) {
        if (!m.Registered(id)) continue;
        Node* x = s.addrs[id];
        if (!NodeOk(x, id)) {
          m.Fail(Fmt("node %" PRIu64 " of a finalizer cycle is corrupt", id));
          break;
        }
        gofin::SetFinalizer(x, nullptr);
        m.SetReg(id, Reg{});
      }
      for (auto id : fp.stuck) StopArgCleanups(m, id);
      if (m.errors.empty()) {
        ExactCycle(m);
        ++cycles;
      }
      if (m.errors.empty() && !m.alive.empty())
        m.Fail(Fmt("%zu nodes of released finalizer cycles were not freed", m.alive.size()));
    } else {
      // Kept forever: drop them from the model; any later event for them is a failure (their
      // cleanups too: a cleanup number the model does not know must not run).
      for (auto id : fp.stuck) m.frozen.insert(id);
      {
        Shared::Guard lock(s.mu);
        for (auto id : fp.stuck) {
          for (std::uint64_t c : m.alive[id].clns) {
            m.cleanups.erase(c);
            s.cln_handles.erase(c);
          }
        }
      }
      for (auto id : fp.stuck) m.alive.erase(id);
      m.Invalidate();
    }
    m.dead.clear();
    m.arg_notes.clear();
    if (s.record_addrs) {
      Shared::Guard lock(s.mu);
      s.addrs.clear();  // everything allocated so far is dead or frozen
    }
  }
  m.final_mode = false;
  s.final_mode.store(false);
  return cycles;
}

// ---------------------------------------------------------------------------------------------
// Operations: planned against a model, executed by a mutator thread on the real heap
// ---------------------------------------------------------------------------------------------

struct Path {
  int slot = -1;
  std::vector<std::uint8_t> idx;
  std::vector<std::uint32_t> offs;
  std::vector<std::uint64_t> ids;  // ids.size() == idx.size() + 1
  std::uint64_t Id() const { return ids.back(); }
};

enum class OpKind : std::uint8_t {
  kAlloc,
  kLink,
  kUnlink,
  kRoot,
  kUnroot,
  kSetFin,
  kSetFinDup,
  kRemoveFin,
  kRemoveFinNone,
  kVerify,
  kChurn,
  kCollect,
  kAddCleanup,   // on a (at offset off; argument: c, or node b at arg_off)
  kStopCleanup,  // cleanup c of node a (set, or stopped already: Stop again)
  kWeakMake,     // of node a at offset off, into weak slot `slot`
  kWeakCheck     // Value() of weak slot `slot` (node new_id at offset off)
};

struct Op {
  OpKind kind{};
  Path a, b;
  int slot = -1;
  int k = 0;
  std::uint32_t off = 0;
  bool had_old = false;
  std::uint64_t new_id = 0;
  int size_kind = 0;
  int place = 0;  // kAlloc: 0 drop, 1 root slot, 2 link into a.child[k]
  bool with_fin = false;
  Reg reg;
  bool cap_self = false;
  Edge expect[kChildren];
  std::uint64_t churn = 0;
  std::uint64_t c = 0;  // cleanup number
  int cln_kind = 0;     // kAddCleanup: 0 functor (arg c), 1 function pointer (arg c), 2 node arg
  std::uint32_t arg_off = 0;
  int weak_expect = 0;  // kWeakCheck: 0 unknown (checked by the replay), 1 nil, 2 non-nil
  int weak_old = 0;     // kWeakMake: 1 the slot holds an equal pointer, 2 one that must be nil
};

// Follows a path from a root, checking every node on the way. nullptr (and a violation) if
// the heap disagrees with the plan.
inline Node* Navigate(const Path& p, int thread) {
  Shared& s = *g_shared;
  Node* n = s.roots[static_cast<std::size_t>(p.slot)].get();
  if (!NodeOk(n, p.ids[0])) {
    s.Violation(Fmt("thread %d: root[%d] should hold live node %" PRIu64 " but holds %s", thread,
                    p.slot, p.ids[0],
                    n ? Fmt("id %" PRIu64 " canary %#" PRIx64, n->id, n->canary).c_str() : "nil"));
    return nullptr;
  }
  for (std::size_t i = 0; i < p.idx.size(); ++i) {
    void* raw = n->child[p.idx[i]];
    const std::uint32_t off = n->child_off[p.idx[i]];
    if (raw == nullptr || off != p.offs[i]) {
      s.Violation(Fmt("thread %d: node %" PRIu64 " lost child[%u] (to %" PRIu64 ")", thread,
                      p.ids[i], p.idx[i], p.ids[i + 1]));
      return nullptr;
    }
    Node* c = reinterpret_cast<Node*>(static_cast<char*>(raw) - off);
    if (!NodeOk(c, p.ids[i + 1])) {
      s.Violation(Fmt("thread %d: reachable node %" PRIu64 " (child of %" PRIu64
                      ") is freed or corrupt: id %" PRIu64 " canary %#" PRIx64,
                      thread, p.ids[i + 1], p.ids[i], c->id, c->canary));
      return nullptr;
    }
    n = c;
  }
  return n;
}

inline void Churn(std::uint64_t seed) {
  std::uint64_t h = Mix(seed);
  const int n = static_cast<int>(h % 64) + 1;
  for (int i = 0; i < n; ++i) {
    h = Mix(h);
    switch (h % 5) {
      case 0: {
        void* p = gofin::Alloc(16 + (h >> 8) % 2000);
        std::memcpy(p, &h, sizeof h);
        break;
      }
      case 1: {
        auto* p = static_cast<unsigned char*>(gofin::AllocNoScan(1 + (h >> 8) % 24));
        p[0] = 1;
        break;
      }
      case 2: {
        // memcpy: a small padded noscan array may come back misaligned (see test_misuse.cpp,
        // NewArrayOfSmallNoScanTypeIsAligned); the oracle checks other things.
        std::uint64_t* a = gofin::NewArray<std::uint64_t>(1 + (h >> 8) % 300);
        std::memcpy(static_cast<void*>(a), &h, sizeof h);
        break;
      }
      case 3:
        gofin::New<Junk>()->words[1] = h;
        break;
      default:
        if ((h >> 8) % 50 == 0) {
          auto* p = static_cast<unsigned char*>(gofin::Alloc(40000 + (h >> 16) % 100000));
          p[0] = 1;
        } else {
          gofin::New<Junk>();
        }
        break;
    }
  }
}

inline void LogSimple(Ev kind, int thread, std::uint64_t x, std::uint64_t y = 0,
                      std::uint32_t k = 0, std::uint32_t off = 0) {
  Event e;
  e.kind = kind;
  e.thread = thread;
  e.x = x;
  e.y = y;
  e.k = k;
  e.off = off;
  g_shared->Log(e);
}

// Executes one planned operation. false: the heap disagreed (a violation was recorded).
[[gnu::noinline]] inline bool Execute(const Op& op, int thread) {
  Shared& s = *g_shared;
  switch (op.kind) {
    case OpKind::kAlloc: {
      Node* x = NewNode(op.size_kind, op.new_id);
      if (s.record_addrs) {
        Shared::Guard lock(s.mu);
        s.addrs[op.new_id] = x;
      }
      {
        Event e;
        e.kind = Ev::kAlloc;
        e.thread = thread;
        e.x = op.new_id;
        e.size_kind = op.size_kind;
        s.Log(e);
      }
      if (op.with_fin) {
        Node* cap = nullptr;
        if (op.cap_self) {
          cap = x;
        } else if (op.reg.cap != 0) {
          cap = Navigate(op.b, thread);
          if (cap == nullptr) return false;
        }
        RegisterFinalizer(x, op.new_id, op.reg, cap);
        Event e;
        e.kind = Ev::kReg;
        e.thread = thread;
        e.x = op.new_id;
        e.reg = op.reg;
        s.Log(e);
        gofin::KeepAlive(cap);
      }
      if (op.place == 1) {
        if (op.had_old) LogSimple(Ev::kUnroot, thread, static_cast<std::uint64_t>(op.slot));
        s.roots[static_cast<std::size_t>(op.slot)] = x;
        LogSimple(Ev::kRoot, thread, static_cast<std::uint64_t>(op.slot), op.new_id);
      } else if (op.place == 2) {
        Node* p = Navigate(op.a, thread);
        if (p == nullptr) return false;
        if (op.had_old)
          LogSimple(Ev::kUnlink, thread, op.a.Id(), 0, static_cast<std::uint32_t>(op.k));
        p->child_off[op.k] = op.off;
        p->child[op.k] = reinterpret_cast<char*>(x) + op.off;
        LogSimple(Ev::kLink, thread, op.a.Id(), op.new_id, static_cast<std::uint32_t>(op.k),
                  op.off);
        gofin::KeepAlive(p);
      }
      gofin::KeepAlive(x);
      return true;
    }
    case OpKind::kLink: {
      Node* p = Navigate(op.a, thread);
      Node* y = p ? Navigate(op.b, thread) : nullptr;
      if (y == nullptr) return false;
      if (op.had_old)
        LogSimple(Ev::kUnlink, thread, op.a.Id(), 0, static_cast<std::uint32_t>(op.k));
      p->child_off[op.k] = op.off;
      p->child[op.k] = reinterpret_cast<char*>(y) + op.off;
      LogSimple(Ev::kLink, thread, op.a.Id(), op.b.Id(), static_cast<std::uint32_t>(op.k), op.off);
      gofin::KeepAlive(p);
      gofin::KeepAlive(y);
      return true;
    }
    case OpKind::kUnlink: {
      Node* p = Navigate(op.a, thread);
      if (p == nullptr) return false;
      LogSimple(Ev::kUnlink, thread, op.a.Id(), 0, static_cast<std::uint32_t>(op.k));
      p->child[op.k] = nullptr;
      p->child_off[op.k] = 0;
      return true;
    }
    case OpKind::kRoot: {
      Node* y = Navigate(op.b, thread);
      if (y == nullptr) return false;
      if (op.had_old) LogSimple(Ev::kUnroot, thread, static_cast<std::uint64_t>(op.slot));
      s.roots[static_cast<std::size_t>(op.slot)] = y;
      LogSimple(Ev::kRoot, thread, static_cast<std::uint64_t>(op.slot), op.b.Id());
      gofin::KeepAlive(y);
      return true;
    }
    case OpKind::kUnroot:
      LogSimple(Ev::kUnroot, thread, static_cast<std::uint64_t>(op.slot));
      s.roots[static_cast<std::size_t>(op.slot)].reset();
      return true;
    case OpKind::kSetFin: {
      Node* x = Navigate(op.a, thread);
      if (x == nullptr) return false;
      Node* cap = nullptr;
      if (op.cap_self) {
        cap = x;
      } else if (op.reg.cap != 0) {
        cap = Navigate(op.b, thread);
        if (cap == nullptr) return false;
      }
      try {
        RegisterFinalizer(x, op.a.Id(), op.reg, cap);
      } catch (const std::exception& ex) {
        s.Violation(Fmt("thread %d: SetFinalizer on node %" PRIu64 " (no finalizer set) threw: %s",
                        thread, op.a.Id(), ex.what()));
        return false;
      }
      Event e;
      e.kind = Ev::kReg;
      e.thread = thread;
      e.x = op.a.Id();
      e.reg = op.reg;
      s.Log(e);
      gofin::KeepAlive(x);
      gofin::KeepAlive(cap);
      return true;
    }
    case OpKind::kSetFinDup: {
      Node* x = Navigate(op.a, thread);
      if (x == nullptr) return false;
      bool threw = false;
      try {
        RegisterFinalizer(x, op.a.Id(), op.reg, nullptr);
      } catch (const gofin::Error& err) {
        threw = true;
        if (std::strcmp(err.what(), "runtime.SetFinalizer: finalizer already set") != 0) {
          s.Violation(Fmt("thread %d: second SetFinalizer threw the wrong message: %s", thread,
                          err.what()));
        }
      }
      if (!threw) {
        s.Violation(Fmt("thread %d: SetFinalizer on node %" PRIu64
                        " which already had one did not throw",
                        thread, op.a.Id()));
        return false;
      }
      gofin::KeepAlive(x);
      return true;
    }
    case OpKind::kRemoveFin: {
      Node* x = Navigate(op.a, thread);
      if (x == nullptr) return false;
      Event e;
      e.kind = Ev::kUnreg;
      e.thread = thread;
      e.x = op.a.Id();
      e.reg.g = op.reg.g;
      s.Log(e);
      gofin::SetFinalizer(x, nullptr);
      gofin::KeepAlive(x);
      return true;
    }
    case OpKind::kRemoveFinNone: {
      Node* x = Navigate(op.a, thread);
      if (x == nullptr) return false;
      gofin::SetFinalizer(x, nullptr);  // none set: a no-op
      gofin::KeepAlive(x);
      return true;
    }
    case OpKind::kVerify: {
      Node* x = Navigate(op.a, thread);
      if (x == nullptr) return false;
      for (int k = 0; k < kChildren; ++k) {
        const Edge& w = op.expect[k];
        void* raw = x->child[k];
        if (w.id == 0) {
          if (raw != nullptr) {
            s.Violation(Fmt("thread %d: node %" PRIu64 " child[%d] set, expected empty", thread,
                            op.a.Id(), k));
            return false;
          }
          continue;
        }
        const Node* c =
            raw ? reinterpret_cast<const Node*>(static_cast<char*>(raw) - x->child_off[k])
                : nullptr;
        if (x->child_off[k] != w.off || !NodeOk(c, w.id)) {
          s.Violation(
              Fmt("thread %d: node %" PRIu64 " child[%d] should be live node %" PRIu64 "; it is %s",
                  thread, op.a.Id(), k, w.id,
                  c ? Fmt("id %" PRIu64 " canary %#" PRIx64, c->id, c->canary).c_str() : "nil"));
          return false;
        }
      }
      return true;
    }
    case OpKind::kChurn:
      Churn(op.churn);
      return true;
    case OpKind::kCollect:
      gofin::GC();
      return true;
    case OpKind::kAddCleanup: {
      Node* x = Navigate(op.a, thread);
      if (x == nullptr) return false;
      Node* arg = nullptr;
      if (op.cln_kind == 2) {
        arg = Navigate(op.b, thread);
        if (arg == nullptr) return false;
      }
      char* p = reinterpret_cast<char*>(x) + op.off;
      gofin::Cleanup h;
      try {
        if (op.cln_kind == 0) {
          h = gofin::AddCleanup(p, ClnInt{op.a.Id()}, op.c);
        } else if (op.cln_kind == 1) {
          h = gofin::AddCleanup(p, &ClnPlain, op.c);
        } else {
          h = gofin::AddCleanup(p, ClnArg{op.c, op.a.Id(), op.b.Id(), op.arg_off},
                                reinterpret_cast<char*>(arg) + op.arg_off);
        }
      } catch (const std::exception& ex) {
        s.Violation(Fmt("thread %d: AddCleanup on node %" PRIu64 "+%u threw: %s", thread, op.a.Id(),
                        op.off, ex.what()));
        return false;
      }
      {
        Shared::Guard lock(s.mu);
        s.cln_handles[op.c] = h;
      }
      Event e;
      e.kind = Ev::kClnAdd;
      e.thread = thread;
      e.x = op.a.Id();
      e.c = op.c;
      e.arg = op.cln_kind == 2 ? op.b.Id() : 0;
      s.Log(e);
      gofin::KeepAlive(x);
      gofin::KeepAlive(arg);
      return true;
    }
    case OpKind::kStopCleanup: {
      Node* x = Navigate(op.a, thread);
      if (x == nullptr) return false;
      gofin::Cleanup h;
      {
        Shared::Guard lock(s.mu);
        auto it = s.cln_handles.find(op.c);
        if (it == s.cln_handles.end()) {
          s.violations.push_back(Fmt("harness: no handle for cleanup %" PRIu64, op.c));
          return false;
        }
        h = it->second;
      }
      Event e;
      e.kind = Ev::kClnStop;
      e.thread = thread;
      e.x = op.a.Id();
      e.c = op.c;
      s.Log(e);  // a removal: logged before it happens
      h.Stop();
      if (op.c % 4 == 0) h.Stop();  // twice: harmless
      if (op.c % 8 == 1) gofin::Cleanup{}.Stop();
      gofin::KeepAlive(x);
      return true;
    }
    case OpKind::kWeakMake: {
      Node* x = Navigate(op.a, thread);
      if (x == nullptr) return false;
      auto* p = reinterpret_cast<Node*>(reinterpret_cast<char*>(x) + op.off);
      const gofin::weak::Pointer<Node> old = s.weak[op.slot];
      const gofin::weak::Pointer<Node> wp = gofin::weak::Make(p);
      if (wp.Value() != p) {
        s.Violation(Fmt("thread %d: weak::Make of live node %" PRIu64 "+%u: Value() is not the "
                        "pointer",
                        thread, op.a.Id(), op.off));
        return false;
      }
      if (op.weak_old == 1 && !(old == wp)) {
        s.Violation(Fmt("thread %d: two weak::Make of live node %" PRIu64 "+%u compare unequal",
                        thread, op.a.Id(), op.off));
        return false;
      }
      if (op.weak_old == 2 && (old == wp || old.Value() != nullptr)) {
        s.Violation(Fmt("thread %d: the weak pointer to node %" PRIu64
                        " made before its finalizer ran is %s after the resurrection",
                        thread, op.a.Id(), old == wp ? "equal to a new one" : "non-nil"));
        return false;
      }
      s.weak[op.slot] = wp;
      Event e;
      e.kind = Ev::kWeakMake;
      e.thread = thread;
      e.x = op.a.Id();
      e.k = static_cast<std::uint32_t>(op.slot);
      e.off = op.off;
      s.Log(e);
      gofin::KeepAlive(x);
      return true;
    }
    case OpKind::kWeakCheck: {
      Node* v = s.weak[op.slot].Value();
      Event e;
      e.kind = Ev::kWeakVal;
      e.thread = thread;
      e.x = op.new_id;
      e.k = static_cast<std::uint32_t>(op.slot);
      e.off = op.off;
      e.y = v != nullptr;
      if (v != nullptr)
        e.x_ok =
            NodeOk(reinterpret_cast<const Node*>(reinterpret_cast<char*>(v) - op.off), op.new_id);
      s.Log(e);
      gofin::KeepAlive(v);
      if ((op.weak_expect == 1 && v != nullptr) || (op.weak_expect == 2 && v == nullptr)) {
        s.Violation(Fmt(
            "thread %d: weak Value() of node %" PRIu64 " is %s; the node is %s", thread, op.new_id,
            v ? "non-nil" : "nil",
            op.weak_expect == 1 ? "reachable, but its finalizer ran since the Make" : "reachable"));
        return false;
      }
      return true;
    }
  }
  return true;
}

// Random choices: an RNG for the oracle, the fuzzer's input for the fuzzer.
struct Chooser {
  virtual ~Chooser() = default;
  virtual std::uint64_t Below(std::uint64_t n) = 0;  // uniform in [0, n), n > 0
  bool Chance(int pct) { return Below(100) < static_cast<std::uint64_t>(pct); }
};

struct Rng final : Chooser {
  std::uint64_t s;
  explicit Rng(std::uint64_t seed) : s(seed) {}
  std::uint64_t Next() { return Mix(s++); }
  std::uint64_t Below(std::uint64_t n) override { return Next() % n; }
};

struct PlanLimits {
  std::size_t max_nodes = 400;  // accessible objects per thread before the planner prunes
  int depth = 48;               // longest path a mutator follows
};

// Plans operations for one mutator that owns some root slots, applying each to the plan
// model as it goes (the plan model evolves exactly as the real graph will).
class Planner {
 public:
  Planner(Model& m, Chooser& ch, std::vector<int> slots, std::uint64_t* next_id,
          PlanLimits lim = {})
      : m_(m), ch_(ch), slots_(std::move(slots)), next_id_(next_id), lim_(lim) {}

  // The weak slots this planner's mutator owns (none: no weak pointer operations).
  void SetWeakSlots(std::vector<int> w) { wslots_ = std::move(w); }

  bool Next(Op& op) {
    Refresh();
    for (int attempt = 0; attempt < 8; ++attempt) {
      if (Try(op)) return true;
    }
    return false;
  }

 private:
  // The nodes this planner's roots reach, breadth first (a node's path: its BFS parent's plus
  // one edge). Recomputed after most operations, so each node stores its parent, not its
  // path: a Path is built only for the nodes an operation picks.
  void Refresh() {
    if (refreshed_ && version_ == m_.PathsVersion()) return;
    refreshed_ = true;
    version_ = m_.PathsVersion();
    order_.clear();
    acc_.clear();
    if (++epoch_ == 0) {  // wrapped: entries of an old epoch would look current
      std::fill(index_.begin(), index_.end(), Slot{});
      epoch_ = 1;
    }
    for (int s : slots_) {
      const std::uint64_t id = m_.roots[static_cast<std::size_t>(s)];
      if (id == 0 || !Index(id)) continue;
      acc_.push_back(Acc{-1, s, 0, 0, 0});
    }
    for (std::size_t i = 0; i < order_.size(); ++i) {
      const int depth = acc_[i].depth;
      if (depth >= lim_.depth) continue;
      const NState& n = m_.alive[order_[i]];
      for (int k = 0; k < kChildren; ++k) {
        const Edge& e = n.child[k];
        if (e.id == 0 || !Index(e.id)) continue;
        acc_.push_back(Acc{static_cast<int>(i), acc_[i].slot, depth + 1, k, e.off});
      }
    }
  }

  // index_: id -> position in order_, open addressing, reset by a new epoch_ (no per-node
  // allocation: a node-based map made Refresh cost 15 us for its ~20 nodes under ASan).
  std::size_t Probe(std::uint64_t id) const {
    const std::size_t mask = index_.size() - 1;
    std::size_t i = static_cast<std::size_t>(Mix(id)) & mask;
    while (index_[i].epoch == epoch_ && index_[i].id != id) i = (i + 1) & mask;
    return i;
  }
  // Appends id to order_ unless it is there already.
  bool Index(std::uint64_t id) {
    if (2 * (order_.size() + 1) > index_.size()) {
      index_.assign(std::max<std::size_t>(64, 2 * index_.size()), Slot{});
      for (std::size_t p = 0; p < order_.size(); ++p)
        index_[Probe(order_[p])] = Slot{order_[p], static_cast<std::uint32_t>(p), epoch_};
    }
    const std::size_t i = Probe(id);
    if (index_[i].epoch == epoch_) return false;
    index_[i] = Slot{id, static_cast<std::uint32_t>(order_.size()), epoch_};
    order_.push_back(id);
    return true;
  }
  std::size_t Pos(std::uint64_t id) const {  // order_.size() if not reached
    if (index_.empty()) return order_.size();
    const Slot& s = index_[Probe(id)];
    return s.epoch == epoch_ ? s.pos : order_.size();
  }
  Path PathAt(std::size_t pos) const {
    Path p;
    const auto n = static_cast<std::size_t>(acc_[pos].depth);
    p.slot = acc_[pos].slot;
    p.idx.resize(n);
    p.offs.resize(n);
    p.ids.resize(n + 1);
    for (auto i = static_cast<int>(pos);; i = acc_[static_cast<std::size_t>(i)].parent) {
      const Acc& a = acc_[static_cast<std::size_t>(i)];
      const auto d = static_cast<std::size_t>(a.depth);
      p.ids[d] = order_[static_cast<std::size_t>(i)];
      if (a.parent < 0) break;
      p.idx[d - 1] = static_cast<std::uint8_t>(a.k);
      p.offs[d - 1] = a.off;
    }
    return p;
  }
  Path PathTo(std::uint64_t id) const { return PathAt(Pos(id)); }

  bool PickNode(Path& out) {
    if (order_.empty()) return false;
    out = PathAt(ch_.Below(order_.size()));
    return true;
  }
  int PickSlot() { return slots_.empty() ? -1 : slots_[ch_.Below(slots_.size())]; }

  // An edge's offset into its target: mostly inside it, sometimes one past its end.
  std::uint32_t PickOffset(int target_size_kind) {
    if (ch_.Chance(15)) return NodeBytes(target_size_kind);
    return kEdgeOffsets[ch_.Below(kNumEdgeOffsets)];
  }

  Reg NewReg(bool allow_capture, std::uint64_t self) {
    Reg r;
    r.g = g_shared->next_g.fetch_add(1);
    const std::uint64_t v = ch_.Below(100);
    r.kind = v < 70 ? 0 : v < 80 ? 1 : v < 90 ? 2 : 3;
    if (r.kind == 0) {
      if (ch_.Chance(25)) r.res_slot = static_cast<int>(ch_.Below(kResSlots));
      r.rereg = ch_.Chance(20);
      if (allow_capture && ch_.Chance(12)) {
        // Mostly something after `self` in BFS order (rarely an ancestor: capturing what
        // reaches the object keeps it forever, like capturing the object itself).
        const std::size_t pos = Pos(self);
        if (ch_.Chance(8)) {
          r.cap = self;
        } else if (pos + 1 < order_.size() && ch_.Chance(90)) {
          r.cap = order_[pos + 1 + ch_.Below(order_.size() - pos - 1)];
        } else if (!order_.empty()) {
          r.cap = order_[ch_.Below(order_.size())];
        }
      }
    }
    return r;
  }

  // Cleanups and weak pointers.
  bool TryExtra(Op& op) {
    const std::uint64_t r = ch_.Below(100);
    if (r < 35) {  // AddCleanup
      if (!PickNode(op.a)) return false;
      const std::uint64_t x = op.a.Id();
      NState& n = m_.alive[x];
      if (n.clns.size() >= 6) return false;
      op.kind = OpKind::kAddCleanup;
      op.off = kInnerOffsets[ch_.Below(kNumInnerOffsets)];
      op.cln_kind = static_cast<int>(ch_.Below(3));
      std::uint64_t arg = 0;
      if (op.cln_kind == 2) {
        // Mostly something after x in BFS order; rarely anything (an ancestor that reaches x
        // keeps x forever, and its cleanups never run).
        const std::size_t pos = Pos(x);
        std::size_t ap;
        if (pos + 1 < order_.size() && ch_.Chance(93)) {
          ap = pos + 1 + ch_.Below(order_.size() - pos - 1);
        } else {
          ap = ch_.Below(order_.size());
        }
        if (order_[ap] == x) {
          op.cln_kind = 0;
        } else {
          op.b = PathAt(ap);
          arg = op.b.Id();
          op.arg_off = kInnerOffsets[ch_.Below(kNumInnerOffsets)];
        }
      }
      op.c = g_shared->next_c.fetch_add(1);
      m_.AddCln(op.c, x, arg);
      return true;
    }
    if (r < 50) {  // Cleanup::Stop
      if (!PickNode(op.a)) return false;
      const NState& n = m_.alive[op.a.Id()];
      if (n.clns.empty()) return false;
      op.kind = OpKind::kStopCleanup;
      op.c = n.clns[ch_.Below(n.clns.size())];
      m_.StopCln(op.c);
      return true;
    }
    if (wslots_.empty()) return false;
    const int w = wslots_[ch_.Below(wslots_.size())];
    const WeakEnt& cur = m_.weak[static_cast<std::size_t>(w)];
    const bool cur_reached = cur.id != 0 && Pos(cur.id) < order_.size();
    if (r < 75) {  // weak::Make: sometimes of what the slot holds already
      op.kind = OpKind::kWeakMake;
      op.slot = w;
      if (cur_reached && ch_.Chance(40)) {
        op.a = PathTo(cur.id);
        op.off = cur.off;
        op.weak_old = cur.cleared ? 2 : 1;
      } else {
        if (!PickNode(op.a)) return false;
        if (ch_.Chance(40)) {  // rather a node whose finalizer resurrects it, if there is one
          const std::size_t start = ch_.Below(order_.size());
          for (std::size_t i = 0; i < order_.size(); ++i) {
            const std::size_t pos = (start + i) % order_.size();
            const Reg& reg = m_.alive[order_[pos]].reg;
            if (reg.g != 0 && reg.kind == 0 && reg.res_slot >= 0) {
              op.a = PathAt(pos);
              break;
            }
          }
        }
        op.off = kInnerOffsets[ch_.Below(kNumInnerOffsets)];
      }
      m_.SetWeak(w, op.a.Id(), op.off);
      return true;
    }
    if (cur.id == 0) return false;
    op.kind = OpKind::kWeakCheck;
    op.slot = w;
    op.new_id = cur.id;
    op.off = cur.off;
    op.weak_expect = !cur_reached ? 0 : cur.cleared ? 1 : 2;
    return true;
  }

  bool Try(Op& op) {
    op = Op{};
    if (ch_.Chance(14)) return TryExtra(op);
    const bool big = order_.size() > lim_.max_nodes;
    const std::uint64_t r = ch_.Below(100);
    if (r < (big ? 8u : 30u)) {  // allocate
      op.kind = OpKind::kAlloc;
      op.new_id = (*next_id_)++;
      const std::uint64_t sz = ch_.Below(100);
      op.size_kind = sz < 75 ? 0 : sz < 88 ? 1 : sz < 97 ? 2 : 3;
      m_.AddNode(op.new_id, op.size_kind);
      if (ch_.Chance(35)) {
        op.with_fin = true;
        op.reg = NewReg(true, op.new_id);
        op.cap_self = op.reg.cap == op.new_id;
        if (op.reg.cap != 0 && !op.cap_self) op.b = PathTo(op.reg.cap);
        m_.SetReg(op.new_id, op.reg);
      }
      const std::uint64_t pl = ch_.Below(100);
      Path parent;
      if (pl < 15 && !slots_.empty()) {
        op.place = 1;
        op.slot = PickSlot();
        op.had_old = m_.roots[static_cast<std::size_t>(op.slot)] != 0;
        m_.SetRoot(op.slot, op.new_id);
      } else if (pl < 85 && PickNode(parent)) {
        op.place = 2;
        op.a = parent;
        op.k = static_cast<int>(ch_.Below(kChildren));
        op.off = PickOffset(op.size_kind);
        op.had_old = m_.alive[parent.Id()].child[op.k].id != 0;
        m_.SetEdge(parent.Id(), op.k, Edge{op.new_id, op.off});
      } else {
        op.place = 0;  // garbage right away
      }
      return true;
    }
    if (r < 45) {  // link; mostly "downwards" in BFS order, so that cycles stay a minority
      if (!PickNode(op.a)) return false;
      const std::size_t pos = Pos(op.a.Id());
      if (pos + 1 < order_.size() && ch_.Chance(95)) {
        op.b = PathAt(pos + 1 + ch_.Below(order_.size() - pos - 1));
      } else if (!PickNode(op.b)) {
        return false;
      }
      op.kind = OpKind::kLink;
      op.k = static_cast<int>(ch_.Below(kChildren));
      op.off = PickOffset(m_.alive[op.b.Id()].size_kind);
      op.had_old = m_.alive[op.a.Id()].child[op.k].id != 0;
      m_.SetEdge(op.a.Id(), op.k, Edge{op.b.Id(), op.off});
      return true;
    }
    if (r < (big ? 70u : 55u)) {  // unlink
      if (!PickNode(op.a)) return false;
      op.kind = OpKind::kUnlink;
      op.k = static_cast<int>(ch_.Below(kChildren));
      if (m_.alive[op.a.Id()].child[op.k].id == 0) return false;
      m_.SetEdge(op.a.Id(), op.k, Edge{});
      return true;
    }
    if (r < 60) {  // root
      op.slot = PickSlot();
      if (op.slot < 0 || !PickNode(op.b)) return false;
      op.kind = OpKind::kRoot;
      op.had_old = m_.roots[static_cast<std::size_t>(op.slot)] != 0;
      m_.SetRoot(op.slot, op.b.Id());
      return true;
    }
    if (r < (big ? 68u : 63u)) {  // unroot
      op.slot = PickSlot();
      if (op.slot < 0 || m_.roots[static_cast<std::size_t>(op.slot)] == 0) return false;
      op.kind = OpKind::kUnroot;
      m_.SetRoot(op.slot, 0);
      return true;
    }
    if (r < 76) {  // set a finalizer (or try to set a second one)
      if (!PickNode(op.a)) return false;
      const std::uint64_t x = op.a.Id();
      if (m_.Registered(x)) {
        op.kind = OpKind::kSetFinDup;
        op.reg.kind = static_cast<int>(ch_.Below(4));
        op.reg.g = 0;
        return true;
      }
      op.kind = OpKind::kSetFin;
      op.reg = NewReg(true, x);
      op.cap_self = op.reg.cap == x;
      if (op.reg.cap != 0 && !op.cap_self) op.b = PathTo(op.reg.cap);
      m_.SetReg(x, op.reg);
      return true;
    }
    if (r < 83) {  // remove a finalizer
      if (!PickNode(op.a)) return false;
      const std::uint64_t x = op.a.Id();
      if (m_.Registered(x)) {
        op.kind = OpKind::kRemoveFin;
        op.reg.g = m_.alive[x].reg.g;
        m_.SetReg(x, Reg{});
      } else {
        op.kind = OpKind::kRemoveFinNone;
      }
      return true;
    }
    if (r < 92) {  // verify
      if (!PickNode(op.a)) return false;
      op.kind = OpKind::kVerify;
      for (int k = 0; k < kChildren; ++k) op.expect[k] = m_.alive[op.a.Id()].child[k];
      return true;
    }
    if (r < 99) {
      op.kind = OpKind::kChurn;
      op.churn = ch_.Below(~std::uint64_t{0});
      return true;
    }
    op.kind = OpKind::kCollect;
    return true;
  }

  Model& m_;
  Chooser& ch_;
  std::vector<int> slots_;
  std::vector<int> wslots_;
  std::uint64_t* next_id_;
  PlanLimits lim_;
  bool refreshed_ = false;
  std::uint64_t version_ = 0;  // the model's PathsVersion at the last Refresh
  struct Acc {
    int parent;  // index in order_; -1: a root
    int slot;    // the root slot the path starts from
    int depth;   // edges from the root
    int k;       // the parent's child index of the last edge
    std::uint32_t off;
  };
  struct Slot {
    std::uint64_t id = 0;
    std::uint32_t pos = 0;
    std::uint32_t epoch = 0;  // the slot is used iff it equals epoch_
  };
  std::vector<std::uint64_t> order_;  // BFS order
  std::vector<Acc> acc_;              // parallel to order_
  std::vector<Slot> index_;           // see Probe
  std::uint32_t epoch_ = 0;
};

}  // namespace oracle
