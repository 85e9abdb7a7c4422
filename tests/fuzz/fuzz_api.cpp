// libFuzzer target: the input's bytes choose a sequence of gofin API operations (allocate,
// link, unlink, root, unroot, SetFinalizer with every callable form, captures, resurrection
// and re-registration, removal, cleanups (AddCleanup at inner offsets with an integer or a node
// argument, one that keeps its object forever now and then, Stop), weak pointers (Make into a
// table of weak slots, Value() checks), misuse that must throw, conservative and exact
// collections, heap walks, final drains). The same model as gofin_oracle (tests/oracle/model.hpp)
// checks every finalizer and destructor, and predicts every exact collection
// (testing::GC(kNoHeapPointers) with pacing off) exactly. Any violation aborts: a finding.
//
// Single-threaded mutator. The heap and the model persist across inputs. Collections are the
// main cost (each marks the data segments, about 10 MB with libFuzzer and ASan, and the heap:
// 4-5 ms with a small heap), so they come from a budget shared by all inputs (one per
// kInputsPerCollection inputs on average, spent where an input asks for one; a final drain
// asked for by an input costs one unit), and a final drain (every root dropped, every
// finalizer outside a finalizer cycle must run within the longest chain + 2 cycles, the model
// emptied) ends every kInputsPerDrain-th input: the fuzzer runs some hundred inputs a second
// instead of one, and every operation is still checked by the drain that follows it. Two
// things keep it there: the model's work per event and per operation is small (model.hpp:
// the marked set is kept incrementally, the drain's fixpoint is linear, the planner rebuilds
// its paths only when they changed), and at most kMaxFrozen objects of finalizer cycles stay
// in the heap.
//
// Build and run: tests/fuzz/build_and_run.sh [seconds]
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "../oracle/model.hpp"

namespace {

constexpr int kRoots = 8;

struct FdpChooser final : oracle::Chooser {
  explicit FdpChooser(FuzzedDataProvider& f) : fdp(f) {}
  std::uint64_t Below(std::uint64_t n) override {
    return n <= 1 ? 0 : fdp.ConsumeIntegralInRange<std::uint64_t>(0, n - 1);
  }
  FuzzedDataProvider& fdp;
};

constexpr std::uint64_t kInputsPerCollection = 8;
constexpr std::uint64_t kInputsPerDrain = 64;
// Objects of finalizer cycles kept forever (and checked by every later cycle); beyond these a
// final drain releases the cycles it finds (see oracle::FinalDrain): without a bound they
// pile up and every collection marks them (a 60 s run froze ~20k nodes, ~25 MB, and an exact
// collection went from ~6 ms to ~20 ms).
constexpr std::size_t kMaxFrozen = 1000;

struct State {
  oracle::Model* model = nullptr;
  std::uint64_t next_id = 1;
  std::uint64_t inputs = 0;
  std::uint64_t collections = 0;
};

// Takes one collection from the shared budget, if any is left.
bool TakeCollection(State& st) {
  if (st.collections * kInputsPerCollection > st.inputs + kInputsPerCollection) return false;
  ++st.collections;
  return true;
}

State& St() {
  static State* s = [] {
    auto* st = new State();
    oracle::g_shared = new oracle::Shared(kRoots);
    oracle::g_shared->seed = 0x5eed;
    oracle::g_shared->record_addrs = true;
    st->model = new oracle::Model(kRoots, 0x5eed);
    gofin::debug::SetGCPercent(-1);
    gofin::debug::SetMemoryLimit(INT64_MAX);
    return st;
  }();
  return *s;
}

[[noreturn]] void Die(oracle::Model& m) {
  std::fprintf(stderr, "fuzz_api: VIOLATION after %llu inputs\n",
               static_cast<unsigned long long>(St().inputs));
  for (const auto& e : m.errors) std::fprintf(stderr, "  violation: %s\n", e.c_str());
  std::fflush(stderr);
  std::abort();
}

void CheckOrDie(oracle::Model& m) {
  oracle::CollectViolations(m);
  if (!m.errors.empty()) Die(m);
}

// Events from finalizers, cleanups and destructors are replayed; the mutator's own were already
// applied by the planner (planning and executing happen on this one thread), except its weak
// Value() checks, which change nothing and are checked by the replay. A collection queues
// finalizers that run later on the finalizer thread: drain first, so that the model is
// current before anything compares it with the heap.
void ApplyLibraryEvents(oracle::Model& m) {
  if (!oracle::Drain()) m.Fail("finalizer queue did not drain");
  for (const oracle::Event& e : oracle::g_shared->Take()) {
    if (e.thread == oracle::kFinThread || e.thread == oracle::kSweepThread ||
        e.thread == oracle::kClnThread || e.kind == oracle::Ev::kWeakVal)
      m.Apply(e);
  }
}

template <class T>
void ExpectError(oracle::Model& m, const char* want, T&& fn) {
  try {
    fn();
  } catch (const gofin::Error& e) {
    if (std::strcmp(e.what(), want) != 0)
      m.Fail(oracle::Fmt("misuse threw '%s', want '%s'", e.what(), want));
    return;
  }
  m.Fail(oracle::Fmt("misuse did not throw '%s'", want));
}

// Misuse that must throw and change nothing.
[[gnu::noinline]] void Misuse(oracle::Model& m, FdpChooser& ch) {
  oracle::Shared& s = *oracle::g_shared;
  int slot = -1;
  for (int i = 0; i < kRoots; ++i)
    if (m.roots[static_cast<std::size_t>(i)] != 0) slot = i;
  switch (ch.Below(8)) {
    case 0:
      ExpectError(m, "runtime.SetFinalizer: first argument is nil", [] {
        gofin::SetFinalizer(static_cast<oracle::Node*>(nullptr), &oracle::FinPlain);
      });
      break;
    case 1: {
      if (slot < 0) break;
      oracle::Node* x = s.roots[static_cast<std::size_t>(slot)].get();
      auto* inner =
          reinterpret_cast<oracle::Node*>(reinterpret_cast<char*>(x) + 8 * (1 + ch.Below(6)));
      ExpectError(m, "runtime.SetFinalizer: pointer not at beginning of allocated block",
                  [&] { gofin::SetFinalizer(inner, &oracle::FinPlain); });
      ExpectError(m, "runtime.SetFinalizer: pointer not at beginning of allocated block",
                  [&] { gofin::SetFinalizer(inner, nullptr); });
      break;
    }
    case 2: {
      auto* heap = static_cast<oracle::Node*>(std::malloc(sizeof(oracle::Node)));
      ExpectError(m, "runtime.SetFinalizer: pointer not in allocated block",
                  [&] { gofin::SetFinalizer(heap, &oracle::FinPlain); });
      std::free(heap);
      break;
    }
    case 4:
      ExpectError(m, "runtime.AddCleanup: ptr is nil", [] {
        gofin::AddCleanup(static_cast<oracle::Node*>(nullptr), &oracle::ClnPlain, std::uint64_t{0});
      });
      break;
    case 5: {
      // An argument equal to ptr, or inside ptr's object: the cleanup could never run.
      if (slot < 0) break;
      char* x = reinterpret_cast<char*>(s.roots[static_cast<std::size_t>(slot)].get());
      ExpectError(m, "runtime.AddCleanup: ptr is equal to arg, cleanup will never run", [&] {
        gofin::AddCleanup(
            x, [](char*) {}, x);
      });
      char* inner = x + 8 * (1 + ch.Below(6));
      ExpectError(m, "runtime.AddCleanup: ptr is within arg, cleanup will never run", [&] {
        gofin::AddCleanup(
            x, [](char*) {}, inner);
      });
      break;
    }
    case 6: {
      auto* heap = static_cast<oracle::Node*>(std::malloc(sizeof(oracle::Node)));
      ExpectError(m, "runtime.AddCleanup: ptr not in allocated block",
                  [&] { gofin::AddCleanup(heap, &oracle::ClnPlain, std::uint64_t{0}); });
      std::free(heap);
      // Harmless: Stop on a default Cleanup; a nil weak pointer.
      gofin::Cleanup{}.Stop();
      if (gofin::weak::Make(static_cast<oracle::Node*>(nullptr)).Value() != nullptr ||
          gofin::weak::Pointer<oracle::Node>().Value() != nullptr)
        m.Fail("a nil weak pointer's Value() is not nullptr");
      break;
    }
    default: {
      if (slot < 0) break;
      // A second SetFinalizer on an object with one must throw and leave the first in place.
      const std::uint64_t id = m.roots[static_cast<std::size_t>(slot)];
      if (!m.Registered(id)) break;
      ExpectError(m, "runtime.SetFinalizer: finalizer already set", [&] {
        gofin::SetFinalizer(s.roots[static_cast<std::size_t>(slot)].get(), &oracle::FinPlain);
      });
      break;
    }
  }
}

void Maintain(oracle::Model& m, FdpChooser& ch) {
  oracle::Shared& s = *oracle::g_shared;
  for (int k = 0; k < oracle::kResSlots; ++k) {
    const std::uint64_t id = m.res[static_cast<std::size_t>(k)];
    if (id == 0) continue;
    if (ch.Chance(50)) {
      const int slot = static_cast<int>(ch.Below(kRoots));
      s.roots[static_cast<std::size_t>(slot)] = s.res[static_cast<std::size_t>(k)].get();
      m.SetRoot(slot, id);
    }
    s.res[static_cast<std::size_t>(k)].reset();
    m.SetRes(k, 0);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  State& st = St();
  ++st.inputs;
  oracle::Model& m = *st.model;
  FuzzedDataProvider fdp(data, size);
  FdpChooser ch(fdp);
  std::vector<int> slots(kRoots);
  for (int i = 0; i < kRoots; ++i) slots[static_cast<std::size_t>(i)] = i;
  oracle::PlanLimits lim;
  lim.max_nodes = 48;
  lim.depth = 16;
  // One planner for the input: it recomputes what the roots reach only when that changed.
  oracle::Planner planner(m, ch, slots, &st.next_id, lim);
  std::vector<int> wslots(oracle::kWeakSlots);
  for (int w = 0; w < oracle::kWeakSlots; ++w) wslots[static_cast<std::size_t>(w)] = w;
  planner.SetWeakSlots(std::move(wslots));
  int ops = 0;
  while (fdp.remaining_bytes() > 0 && ops++ < 300) {
    const std::uint8_t sel = fdp.ConsumeIntegral<std::uint8_t>();
    m.where = oracle::Fmt("input %llu op %d (selector %u)",
                          static_cast<unsigned long long>(st.inputs), ops, sel);
    if (sel < 220) {
      oracle::Op op;
      if (!planner.Next(op)) continue;
      if (op.kind == oracle::OpKind::kCollect) {
        if (!fdp.ConsumeBool() || !TakeCollection(st)) continue;
      }
      if (!oracle::Execute(op, 0)) {
        CheckOrDie(m);
        m.Fail("Execute failed without a violation");
        Die(m);
      }
      ApplyLibraryEvents(m);
    } else if (sel < 226) {
      if (TakeCollection(st)) oracle::ExactCycle(m);
    } else if (sel < 233) {
      oracle::CheckHeapGraph(m);
    } else if (sel < 240) {
      Maintain(m, ch);
    } else if (sel < 250) {
      Misuse(m, ch);
    } else if (sel < 253) {
      // A conservative collection (this thread's stack is scanned): only the safety checks.
      if (TakeCollection(st)) {
        gofin::GC();
        ApplyLibraryEvents(m);
      }
    } else if (TakeCollection(st)) {
      m.where += " final drain";
      oracle::FinalDrain(m, nullptr, kMaxFrozen);
      m.watermark = st.next_id;
    }
    CheckOrDie(m);
  }
  m.where = oracle::Fmt("input %llu end", static_cast<unsigned long long>(st.inputs));
  ApplyLibraryEvents(m);
  oracle::CheckHeapGraph(m);
  CheckOrDie(m);
  if (st.inputs % kInputsPerDrain == 0) {
    oracle::FinalDrain(m, nullptr, kMaxFrozen);
    m.watermark = st.next_id;
    CheckOrDie(m);
  }
  return 0;
}
