// Finalizers on ordinary C++ objects (API.md "Finalizers": a pointer from an object into
// itself is not a cycle), one-past-the-end pointers of New<T> objects (API.md "Allocation": a
// pointer one past the end of any object keeps that object alive), and inner pointers, which
// SetFinalizer accepts only inside a tiny block.
//
//   - CppObjectFinalizers/<Case>: N objects of one C++ type, each with a finalizer, dropped:
//     every finalizer runs exactly once within a few cycles, and every destructor once after
//     it. The cases are standard containers (default std::allocator, so their nodes are in
//     malloc memory that gofin does not scan), empty and not, std::string short (SSO) and
//     long, std::function, std::optional, std::variant, smart pointers, polymorphic classes,
//     multiple and virtual inheritance with the finalizer taking a base pointer, and objects
//     holding `this` or a pointer to one of their own members. Many of these point into
//     themselves (an empty std::list's sentinel, a std::map's header, an unordered_map's
//     single bucket, a short string's inline buffer).
//   - CppObjectFinalizerOrder: A -> B, both such objects, both finalized: A first, B in a
//     later cycle (Go's rule), self-pointers notwithstanding.
//   - CppObjectCycles: a cycle through another GC object still keeps a finalized object alive
//     (a gofin::Allocator std::list's nodes point back at the list), as in Go.
//   - EndPointer: only `reinterpret_cast<char*>(p) + sizeof(T)` is held (T's size is exactly
//     a size class): the object must not be finalized and its contents stay intact; also for
//     the last object of a span (its end is the next span's first byte) and large objects
//     whose size is a multiple of the page size.
//   - TinyInnerPointer: an inner pointer of a scanned (or non-tiny noscan) object is rejected
//     whatever its pointee type; a real tiny object's inner pointer is accepted.
//
// Conservative scanning: objects are allocated and dropped in short-lived threads (a dead
// thread's stack is not scanned), and waits for a finalizer are bounded numbers of GC()s,
// since a stale word elsewhere may keep an object a cycle or two longer.
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <forward_list>
#include <functional>
#include <gofin/gofin.hpp>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include "heap/malloc.hpp"
#include "heap/size_classes.hpp"
#include "heap/span.hpp"
#include "test_support.hpp"

namespace {

using namespace std::chrono_literals;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

[[gnu::noinline]] void CollectClean() {
  gofin_test::ClobberStack();
  gofin::GC();
}

bool Drain() { return gofin::testing::BlockUntilEmptyFinalizerQueue(30s); }

[[gnu::noinline]] void GCAndDrain() {
  CollectClean();
  ASSERT_TRUE(Drain()) << "the finalizer queue did not drain within 30 s";
}

using gofin_test::InThread;

volatile std::uintptr_t g_mask = 0x5a5a000000000000ULL;
std::uintptr_t Encode(const volatile void* p) {
  return reinterpret_cast<std::uintptr_t>(p) ^ g_mask;
}
template <class T>
T* Decode(std::uintptr_t v) {
  return reinterpret_cast<T*>(v ^ g_mask);
}

int Load(const std::atomic<int>& a) { return a.load(); }

[[maybe_unused]] ::testing::Environment* const g_env =
    ::testing::AddGlobalTestEnvironment(new gofin_test::NoPacingEnvironment);

constexpr std::uint64_t kCanary = 0x9e3779b97f4a7c15ULL;
constexpr std::uint64_t kDead = 0xdeadbeefdeadbeefULL;

// The cycle the test is in, as the finalizers that run after it see it.
std::atomic<int> g_cycle{0};

// Up to `max_cycles` collections, each followed by a drain, until done() holds.
template <class Done>
int CollectUntil(int max_cycles, Done done) {
  int cycles = 0;
  while (cycles < max_cycles && !done()) {
    g_cycle.fetch_add(1);
    GCAndDrain();
    ++cycles;
  }
  return cycles;
}

// ---------------------------------------------------------------------------------------------
// The matrix: per-case counters, per object
// ---------------------------------------------------------------------------------------------

constexpr int kN = 100;
constexpr int kMaxCycles = 6;

struct Stats {
  std::atomic<int> fin[kN];
  std::atomic<int> dtor[kN];
  std::atomic<int> fin_total{0};
  std::atomic<int> dtor_total{0};
  std::atomic<int> bad{0};              // a finalizer saw a damaged object or a bad id
  std::atomic<int> dtor_before_fin{0};  // a destructor ran before the object's finalizer

  void Reset() {
    for (int i = 0; i < kN; ++i) {
      fin[i] = 0;
      dtor[i] = 0;
    }
    fin_total = 0;
    dtor_total = 0;
    bad = 0;
    dtor_before_fin = 0;
  }
  void Fin(int id, bool ok) {
    if (id < 0 || id >= kN) {
      bad.fetch_add(1);
      return;
    }
    if (!ok) bad.fetch_add(1);
    if (dtor[id].load() != 0) dtor_before_fin.fetch_add(1);
    fin[id].fetch_add(1);
    fin_total.fetch_add(1);
  }
  void Dtor(int id) {
    if (id < 0 || id >= kN) {
      bad.fetch_add(1);
      return;
    }
    if (fin[id].load() == 0) dtor_before_fin.fetch_add(1);
    dtor[id].fetch_add(1);
    dtor_total.fetch_add(1);
  }
  // The ids whose counter is not exactly 1, for messages.
  static std::string NotOnce(const std::atomic<int> (&c)[kN]) {
    std::string s;
    int shown = 0;
    int total = 0;
    for (int i = 0; i < kN; ++i) {
      const int v = c[i].load();
      if (v == 1) continue;
      ++total;
      if (shown++ < 8) s += " #" + std::to_string(i) + "=" + std::to_string(v);
    }
    if (total > 8) s += " ...";
    return total == 0 ? "none" : std::to_string(total) + " objects:" + s;
  }
};

template <class Case>
Stats& StatsOf() {
  static Stats s;
  return s;
}

// A C++ object holding one member of the case's type.
template <class Case>
struct Holder {
  explicit Holder(int i) : id(i), m(Case::Make(i)) {}
  ~Holder() {
    StatsOf<Case>().Dtor(id);
    canary = kDead;
  }
  Holder(const Holder&) = delete;
  Holder& operator=(const Holder&) = delete;

  std::uint64_t canary = kCanary;
  int id;
  typename Case::Member m;
};

template <class Case>
void FinHolder(Holder<Case>* h) {
  StatsOf<Case>().Fin(h->id, h->canary == kCanary && Case::Check(h->m, h->id));
}

template <class Case>
struct MemberCase {
  static void MakeAndSet(int id) {
    auto* h = gofin::New<Holder<Case>>(id);
    gofin::SetFinalizer(h, &FinHolder<Case>);
  }
};

#define GOFIN_MEMBER_CASE(Name, Type, make_expr, check_expr)                       \
  struct Name : MemberCase<Name> {                                                 \
    static constexpr const char* kName = #Name;                                    \
    using Member = Type;                                                           \
    static Member Make([[maybe_unused]] int id) { return make_expr; }              \
    static bool Check([[maybe_unused]] const Member& m, [[maybe_unused]] int id) { \
      return check_expr;                                                           \
    }                                                                              \
  }

using IntVector = std::vector<int>;
using IntDeque = std::deque<int>;
using IntList = std::list<int>;
using IntForwardList = std::forward_list<int>;
using IntMap = std::map<int, int>;
using IntSet = std::set<int>;
using IntMultimap = std::multimap<int, int>;
using IntUnorderedMap = std::unordered_map<int, int>;
using IntUnorderedSet = std::unordered_set<int>;
using EmptyArray = std::array<int, 0>;
using LongArray = std::array<long, 6>;
using IntFunction = std::function<int()>;
using OptString = std::optional<std::string>;
using OptInt = std::optional<int>;
using IntOrString = std::variant<int, std::string>;
using SharedInt = std::shared_ptr<int>;
using UniqueInt = std::unique_ptr<int>;

// Fits the SSO buffer (15 chars in libstdc++), so the string points into itself.
std::string ShortString(int id) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "s%d", id);
  return buf;
}
// Does not: its characters are in malloc'd memory.
std::string LongString(int id) {
  char buf[96];
  std::snprintf(buf, sizeof(buf), "%064d", id);
  return buf;
}

GOFIN_MEMBER_CASE(VectorEmpty, IntVector, {}, m.empty());
GOFIN_MEMBER_CASE(VectorFull, IntVector, (IntVector{id, id + 1, id + 2}),
                  (m == IntVector{id, id + 1, id + 2}));
GOFIN_MEMBER_CASE(DequeEmpty, IntDeque, {}, m.empty());
GOFIN_MEMBER_CASE(DequeFull, IntDeque, (IntDeque{id, id + 1}), (m == IntDeque{id, id + 1}));
GOFIN_MEMBER_CASE(ListEmpty, IntList, {}, m.empty());
GOFIN_MEMBER_CASE(ListFull, IntList, (IntList{id, id + 1, id + 2}),
                  (m == IntList{id, id + 1, id + 2}));
GOFIN_MEMBER_CASE(ForwardListEmpty, IntForwardList, {}, m.empty());
GOFIN_MEMBER_CASE(ForwardListFull, IntForwardList, (IntForwardList{id, id + 1}),
                  (m == IntForwardList{id, id + 1}));
GOFIN_MEMBER_CASE(MapEmpty, IntMap, {}, m.empty());
GOFIN_MEMBER_CASE(MapFull, IntMap, (IntMap{{id, 1}, {id + 1, 2}}),
                  (m == IntMap{{id, 1}, {id + 1, 2}}));
GOFIN_MEMBER_CASE(SetEmpty, IntSet, {}, m.empty());
GOFIN_MEMBER_CASE(SetFull, IntSet, (IntSet{id, id + 7}), (m == IntSet{id, id + 7}));
GOFIN_MEMBER_CASE(MultimapEmpty, IntMultimap, {}, m.empty());
GOFIN_MEMBER_CASE(MultimapFull, IntMultimap, (IntMultimap{{id, 1}, {id, 2}}), m.count(id) == 2);
GOFIN_MEMBER_CASE(UnorderedMapEmpty, IntUnorderedMap, {}, m.empty());
GOFIN_MEMBER_CASE(UnorderedMapFull, IntUnorderedMap, (IntUnorderedMap{{id, 1}, {id + 1, 2}}),
                  m.size() == 2 && m.at(id) == 1 && m.at(id + 1) == 2);
GOFIN_MEMBER_CASE(UnorderedSetEmpty, IntUnorderedSet, {}, m.empty());
GOFIN_MEMBER_CASE(UnorderedSetFull, IntUnorderedSet, (IntUnorderedSet{id, id + 3}),
                  m.size() == 2 && m.count(id + 3) == 1);
GOFIN_MEMBER_CASE(ArrayEmpty, EmptyArray, {}, m.empty());
GOFIN_MEMBER_CASE(ArrayFull, LongArray, (LongArray{id, 1, 2, 3, 4, 5}), m[0] == id && m[5] == 5);
GOFIN_MEMBER_CASE(StringEmpty, std::string, {}, m.empty());
GOFIN_MEMBER_CASE(StringShort, std::string, ShortString(id), m == ShortString(id));
GOFIN_MEMBER_CASE(StringLong, std::string, LongString(id), m == LongString(id));
GOFIN_MEMBER_CASE(FunctionEmpty, IntFunction, {}, !m);
GOFIN_MEMBER_CASE(FunctionSmallLambda, IntFunction, ([id] { return id * 3; }), m&& m() == id * 3);
GOFIN_MEMBER_CASE(OptionalEmpty, OptString, std::nullopt, !m.has_value());
GOFIN_MEMBER_CASE(OptionalInt, OptInt, id, m == id);
GOFIN_MEMBER_CASE(OptionalShortString, OptString, ShortString(id), m == ShortString(id));
GOFIN_MEMBER_CASE(OptionalLongString, OptString, LongString(id), m == LongString(id));
GOFIN_MEMBER_CASE(VariantInt, IntOrString, id, std::get<int>(m) == id);
GOFIN_MEMBER_CASE(VariantShortString, IntOrString, ShortString(id),
                  std::get<std::string>(m) == ShortString(id));
GOFIN_MEMBER_CASE(VariantLongString, IntOrString, LongString(id),
                  std::get<std::string>(m) == LongString(id));
GOFIN_MEMBER_CASE(SharedPtrEmpty, SharedInt, nullptr, m == nullptr);
GOFIN_MEMBER_CASE(SharedPtr, SharedInt, std::make_shared<int>(id), m&&* m == id);
GOFIN_MEMBER_CASE(UniquePtr, UniqueInt, std::make_unique<int>(id), m&&* m == id);

// Several self-pointing members at once.
struct Mixed {
  IntList list;
  IntMap map;
  std::string name;
  IntUnorderedMap index;
  IntVector values;
};
GOFIN_MEMBER_CASE(MixedEmptyAndShort, Mixed, (Mixed{{}, {}, ShortString(id), {}, {id}}),
                  m.list.empty() && m.map.empty() && m.name == ShortString(id) && m.index.empty() &&
                      m.values == IntVector{id});

#undef GOFIN_MEMBER_CASE

// Polymorphic class; the finalizer takes the abstract base.
struct Shape {
  virtual ~Shape() = default;
  [[nodiscard]] virtual int Id() const = 0;
  std::uint64_t canary = kCanary;
};
struct Polymorphic {
  static constexpr const char* kName = "Polymorphic";
  struct Circle final : Shape {
    explicit Circle(int i) : id(i) {}
    ~Circle() override { StatsOf<Polymorphic>().Dtor(id); }
    [[nodiscard]] int Id() const override { return id; }
    int id;
    double radius = 1.5;
  };
  static void MakeAndSet(int id) {
    gofin::SetFinalizer(gofin::New<Circle>(id), [](Shape* s) {
      const auto* c = dynamic_cast<const Circle*>(s);
      StatsOf<Polymorphic>().Fin(s->Id(), s->canary == kCanary && c != nullptr && c->radius == 1.5);
    });
  }
};

// Polymorphic with a self-pointing member, finalizer through the base.
struct PolymorphicShortString {
  static constexpr const char* kName = "PolymorphicShortString";
  struct Named final : Shape {
    explicit Named(int i) : id(i), name(ShortString(i)) {}
    ~Named() override { StatsOf<PolymorphicShortString>().Dtor(id); }
    [[nodiscard]] int Id() const override { return id; }
    int id;
    std::string name;
  };
  static void MakeAndSet(int id) {
    gofin::SetFinalizer(gofin::New<Named>(id), [](Shape* s) {
      const auto* n = dynamic_cast<const Named*>(s);
      StatsOf<PolymorphicShortString>().Fin(
          s->Id(), s->canary == kCanary && n != nullptr && n->name == ShortString(n->id));
    });
  }
};

// Multiple inheritance; the finalizer takes the second base (not at offset 0). kShortLabel:
// the object also holds a short string (a pointer into itself, behind the base pointer the
// finalizer gets).
template <bool kShortLabel>
struct MultipleInheritanceT {
  static constexpr const char* kName =
      kShortLabel ? "MultipleInheritanceShortString" : "MultipleInheritance";
  struct First {
    virtual ~First() = default;
    std::uint64_t f = 0xF1F1F1F1ULL;
  };
  struct Second {
    virtual ~Second() = default;
    std::uint64_t s = 0x5EC05EC0ULL;
    int id = -1;
  };
  static std::string Label(int id) { return kShortLabel ? ShortString(id) : LongString(id); }
  struct Both final : First, Second {
    explicit Both(int i) : label(Label(i)) { this->id = i; }
    ~Both() override { StatsOf<MultipleInheritanceT>().Dtor(this->id); }
    std::string label;
  };
  static void MakeAndSet(int id) {
    gofin::SetFinalizer(gofin::New<Both>(id), [](Second* s) {
      const auto* b = static_cast<const Both*>(s);
      StatsOf<MultipleInheritanceT>().Fin(
          s->id, s->s == 0x5EC05EC0ULL && b->f == 0xF1F1F1F1ULL && b->label == Label(s->id));
    });
  }
};
using MultipleInheritance = MultipleInheritanceT<false>;
using MultipleInheritanceShortString = MultipleInheritanceT<true>;

// Virtual inheritance (a diamond); the finalizer takes the virtual base.
struct VirtualInheritance {
  static constexpr const char* kName = "VirtualInheritance";
  struct Base {
    virtual ~Base() = default;
    std::uint64_t tag = 0x77ULL;
    int id = -1;
  };
  struct Left : virtual Base {
    std::uint64_t l = 1;
  };
  struct Right : virtual Base {
    std::uint64_t r = 2;
  };
  struct Diamond final : Left, Right {
    explicit Diamond(int i) { id = i; }
    ~Diamond() override { StatsOf<VirtualInheritance>().Dtor(id); }
  };
  static void MakeAndSet(int id) {
    gofin::SetFinalizer(gofin::New<Diamond>(id), [](Base* b) {
      const auto* d = dynamic_cast<const Diamond*>(b);
      StatsOf<VirtualInheritance>().Fin(
          b->id, b->tag == 0x77ULL && d != nullptr && d->l == 1 && d->r == 2);
    });
  }
};

// An object holding `this`.
struct HoldsThis {
  static constexpr const char* kName = "HoldsThis";
  struct Self {
    explicit Self(int i) : id(i) {}
    ~Self() { StatsOf<HoldsThis>().Dtor(id); }
    Self(const Self&) = delete;
    Self& operator=(const Self&) = delete;
    Self* self = this;
    int id;
  };
  static void MakeAndSet(int id) {
    gofin::SetFinalizer(gofin::New<Self>(id),
                        [](Self* s) { StatsOf<HoldsThis>().Fin(s->id, s->self == s); });
  }
};

// An object holding a pointer to one of its own members (not its beginning).
struct HoldsInnerPointer {
  static constexpr const char* kName = "HoldsInnerPointer";
  struct Cursor {
    explicit Cursor(int i) : id(i) { buf[5] = i; }
    ~Cursor() { StatsOf<HoldsInnerPointer>().Dtor(id); }
    Cursor(const Cursor&) = delete;
    Cursor& operator=(const Cursor&) = delete;
    int id;
    int buf[8] = {};
    int* cur = &buf[5];
  };
  static void MakeAndSet(int id) {
    gofin::SetFinalizer(gofin::New<Cursor>(id), [](Cursor* c) {
      StatsOf<HoldsInnerPointer>().Fin(c->id, c->cur == &c->buf[5] && *c->cur == c->id);
    });
  }
};

// A stateful finalizer (its callable lives in a GC block) on a self-pointing object.
struct StatefulFinalizerShortString {
  static constexpr const char* kName = "StatefulFinalizerShortString";
  struct Obj {
    explicit Obj(int i) : id(i), name(ShortString(i)) {}
    ~Obj() { StatsOf<StatefulFinalizerShortString>().Dtor(id); }
    Obj(const Obj&) = delete;
    Obj& operator=(const Obj&) = delete;
    int id;
    std::string name;
  };
  static void MakeAndSet(int id) {
    const int expect = id * 7;
    gofin::SetFinalizer(gofin::New<Obj>(id), [expect](Obj* o) {
      StatsOf<StatefulFinalizerShortString>().Fin(
          o->id, expect == o->id * 7 && o->name == ShortString(o->id));
    });
  }
};

template <class Case>
[[gnu::noinline]] void MakeAll() {
  for (int i = 0; i < kN; ++i) Case::MakeAndSet(i);
}

template <class Case>
class CppObjectFinalizers : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 3; ++i) GCAndDrain();
  }
};

struct CaseNames {
  template <class Case>
  static std::string GetName(int /*index*/) {
    return Case::kName;
  }
};

using Cases = ::testing::Types<
    VectorEmpty, VectorFull, DequeEmpty, DequeFull, ListEmpty, ListFull, ForwardListEmpty,
    ForwardListFull, MapEmpty, MapFull, SetEmpty, SetFull, MultimapEmpty, MultimapFull,
    UnorderedMapEmpty, UnorderedMapFull, UnorderedSetEmpty, UnorderedSetFull, ArrayEmpty, ArrayFull,
    StringEmpty, StringShort, StringLong, FunctionEmpty, FunctionSmallLambda, OptionalEmpty,
    OptionalInt, OptionalShortString, OptionalLongString, VariantInt, VariantShortString,
    VariantLongString, SharedPtrEmpty, SharedPtr, UniquePtr, MixedEmptyAndShort, Polymorphic,
    PolymorphicShortString, MultipleInheritance, MultipleInheritanceShortString, VirtualInheritance,
    HoldsThis, HoldsInnerPointer, StatefulFinalizerShortString>;
TYPED_TEST_SUITE(CppObjectFinalizers, Cases, CaseNames);

}  // namespace

// Each finalizer runs exactly once within kMaxCycles collections of its object being dropped,
// sees its object intact, and each destructor runs exactly once afterwards.
TYPED_TEST(CppObjectFinalizers, EachRunsOnceThenTheDestructor) {
  using Case = TypeParam;
  Stats& st = StatsOf<Case>();
  st.Reset();
  InThread([] { MakeAll<Case>(); });
  EXPECT_EQ(Load(st.fin_total), 0) << "finalizers ran before any collection";
  const int cycles = CollectUntil(kMaxCycles, [&] { return Load(st.fin_total) >= kN; });
  ASSERT_EQ(Load(st.fin_total), kN)
      << Case::kName << ": " << Load(st.fin_total) << " of " << kN << " finalizers ran within "
      << kMaxCycles << " GC() + drain cycles of the objects being dropped; not exactly once: "
      << Stats::NotOnce(st.fin);
  EXPECT_EQ(Stats::NotOnce(st.fin), "none") << Case::kName << ": finalizer run counts";
  EXPECT_EQ(Load(st.bad), 0) << Case::kName << ": a finalizer saw a damaged object";
  // The destructors: after the finalizer ran, the object is unreachable again and freed.
  CollectUntil(kMaxCycles, [&] { return Load(st.dtor_total) >= kN; });
  EXPECT_EQ(Load(st.dtor_total), kN)
      << Case::kName << ": destructors run within " << kMaxCycles
      << " more cycles; not exactly once: " << Stats::NotOnce(st.dtor);
  EXPECT_EQ(Load(st.dtor_before_fin), 0)
      << Case::kName << ": a destructor ran before the finalizer";
  GCAndDrain();
  EXPECT_EQ(Stats::NotOnce(st.fin), "none") << Case::kName << ": a finalizer ran again";
  EXPECT_EQ(Stats::NotOnce(st.dtor), "none") << Case::kName << ": a destructor ran again";
  ::testing::Test::RecordProperty("cycles_to_finalize", cycles);
}

// ---------------------------------------------------------------------------------------------
// Ordering: A -> B, both self-pointing C++ objects with finalizers
// ---------------------------------------------------------------------------------------------

namespace {

struct OrderNode {
  explicit OrderNode(int i) : id(i), name(ShortString(i)) {}
  ~OrderNode();
  OrderNode(const OrderNode&) = delete;
  OrderNode& operator=(const OrderNode&) = delete;
  [[nodiscard]] bool Ok() const {
    return canary == kCanary && list.empty() && map.empty() && name == ShortString(id);
  }
  std::uint64_t canary = kCanary;
  int id;
  IntList list;  // empty: its sentinel points into the object
  IntMap map;    // empty: its header points into the object
  std::string name;
  OrderNode* next = nullptr;
};

std::atomic<int> g_order_a_cycle[kN];  // the cycle after which A's finalizer ran, 0: not yet
std::atomic<int> g_order_b_cycle[kN];
std::atomic<int> g_order_a_runs{0};
std::atomic<int> g_order_b_runs{0};
std::atomic<int> g_order_bad{0};
std::atomic<int> g_order_dtors{0};
std::atomic<int> g_order_b_dtors{0};

OrderNode::~OrderNode() {
  canary = kDead;
  g_order_dtors.fetch_add(1);
  if (id >= kN) g_order_b_dtors.fetch_add(1);
}

void FinOrderA(OrderNode* a) {
  const int i = a->id;
  if (i < 0 || i >= kN || !a->Ok()) {
    g_order_bad.fetch_add(1);
    return;
  }
  // What A references is alive and intact while A's finalizer runs.
  if (a->next == nullptr || !a->next->Ok() || a->next->id != kN + i) g_order_bad.fetch_add(1);
  if (g_order_b_cycle[i].load() != 0) g_order_bad.fetch_add(1000);
  g_order_a_cycle[i] = g_cycle.load();
  g_order_a_runs.fetch_add(1);
}

void FinOrderB(OrderNode* b) {
  const int i = b->id - kN;
  if (i < 0 || i >= kN || !b->Ok()) {
    g_order_bad.fetch_add(1);
    return;
  }
  g_order_b_cycle[i] = g_cycle.load();
  g_order_b_runs.fetch_add(1);
}

[[gnu::noinline]] void MakeOrderPairs() {
  for (int i = 0; i < kN; ++i) {
    auto* a = gofin::New<OrderNode>(i);
    auto* b = gofin::New<OrderNode>(kN + i);
    a->next = b;
    gofin::SetFinalizer(a, &FinOrderA);
    gofin::SetFinalizer(b, &FinOrderB);
  }
}

}  // namespace

TEST(CppObjectFinalizerOrder, ReferencingObjectFirstThenTheReferencedOneInALaterCycle) {
  for (int i = 0; i < 3; ++i) GCAndDrain();
  for (int i = 0; i < kN; ++i) {
    g_order_a_cycle[i] = 0;
    g_order_b_cycle[i] = 0;
  }
  g_order_a_runs = 0;
  g_order_b_runs = 0;
  g_order_bad = 0;
  g_order_dtors = 0;
  g_order_b_dtors = 0;
  InThread([] { MakeOrderPairs(); });
  CollectUntil(kMaxCycles + 2, [] { return Load(g_order_b_runs) >= kN; });
  EXPECT_EQ(Load(g_order_a_runs), kN) << "A's finalizers (A -> B, both hold self-pointers)";
  EXPECT_EQ(Load(g_order_b_runs), kN) << "B's finalizers";
  EXPECT_EQ(Load(g_order_bad), 0) << "a finalizer saw a damaged object, or B's ran before A's";
  int same_or_earlier = 0;
  for (int i = 0; i < kN; ++i) {
    const int a = g_order_a_cycle[i].load();
    const int b = g_order_b_cycle[i].load();
    if (a != 0 && b != 0 && b <= a) ++same_or_earlier;
  }
  EXPECT_EQ(same_or_earlier, 0) << "B finalized in the same cycle as A (or before) although A "
                                   "referenced B";
  CollectUntil(kMaxCycles, [] { return Load(g_order_dtors) >= 2 * kN; });
  EXPECT_EQ(Load(g_order_dtors), 2 * kN) << "destructors of A and B";
}

// ---------------------------------------------------------------------------------------------
// Cycles through other GC objects keep a finalized object alive (Go's markrootSpans)
// ---------------------------------------------------------------------------------------------

namespace {

struct CycleOwner;
struct CycleLink {
  CycleOwner* back = nullptr;
  std::uint64_t pad = 0;
};
struct CycleOwner {
  std::uint64_t canary = kCanary;
  CycleLink* link = nullptr;
};

std::atomic<int> g_cycle_runs{0};
std::atomic<std::uintptr_t> g_cycle_links[8];  // Encode()d CycleLink pointers

[[gnu::noinline]] void MakeCycles() {
  for (int i = 0; i < 8; ++i) {
    auto* o = gofin::New<CycleOwner>();
    auto* l = gofin::New<CycleLink>();
    o->link = l;
    // Half point back at the owner's beginning, half into its middle.
    l->back = i % 2 == 0 ? o : reinterpret_cast<CycleOwner*>(&o->link);
    gofin::SetFinalizer(o, [](CycleOwner* p) {
      if (p->canary == kCanary) g_cycle_runs.fetch_add(1);
    });
    g_cycle_links[i] = Encode(l);
  }
}

// The gofin::Allocator list's nodes (GC objects) point back at the sentinel inside the
// finalized object: a cycle through other GC objects. Go's rule (and API.md): such a cycle is
// never collected, so the finalizer does not run while the cycle exists.
struct AllocList {
  std::uint64_t canary = kCanary;
  std::list<int, gofin::Allocator<int>> list;
};
std::atomic<int> g_alloc_list_runs{0};

[[gnu::noinline]] void MakeAllocatorLists() {
  for (int i = 0; i < 8; ++i) {
    auto* o = gofin::New<AllocList>();
    o->list.push_back(i);
    o->list.push_back(i + 1);
    gofin::SetFinalizer(o, [](AllocList*) { g_alloc_list_runs.fetch_add(1); });
  }
}

}  // namespace

// A -> C -> A (C a plain GC object without a finalizer): never finalized while the cycle
// exists; once C no longer points back, A is finalized.
TEST(CppObjectCycles, CycleThroughAnotherGCObjectKeepsItAlive) {
  for (int i = 0; i < 3; ++i) GCAndDrain();
  g_cycle_runs = 0;
  InThread([] { MakeCycles(); });
  for (int i = 0; i < 4; ++i) GCAndDrain();
  EXPECT_EQ(Load(g_cycle_runs), 0) << "an object in a cycle through another GC object was "
                                      "finalized";
  InThread([] {
    for (auto& l : g_cycle_links) Decode<CycleLink>(l.load())->back = nullptr;
  });
  CollectUntil(kMaxCycles, [] { return Load(g_cycle_runs) >= 8; });
  EXPECT_EQ(Load(g_cycle_runs), 8) << "control: with the cycle broken, every owner is finalized";
}

TEST(CppObjectCycles, AllocatorListNodesPointingBackKeepTheOwnerAlive) {
  for (int i = 0; i < 3; ++i) GCAndDrain();
  g_alloc_list_runs = 0;
  InThread([] { MakeAllocatorLists(); });
  for (int i = 0; i < 4; ++i) GCAndDrain();
  EXPECT_EQ(Load(g_alloc_list_runs), 0)
      << "a gofin::Allocator std::list's nodes point back into their owner: a cycle through "
         "other GC objects, never finalized (Go's rule)";
}

// ---------------------------------------------------------------------------------------------
// One-past-the-end pointers of New<T> objects
// ---------------------------------------------------------------------------------------------

namespace {

constexpr std::uint64_t kPatternTag = 0xA5C3000000000000ULL;  // non-canonical: never a pointer
// Each check is a new run: an object a failed earlier check left behind is finalized later
// with its own run's pattern, and is not counted as this run's.
std::atomic<std::uint64_t> g_end_run{0};
std::uint64_t Pattern(int id, std::size_t word) {
  return kPatternTag ^ ((g_end_run.load() & 0xFFF) << 36) ^ (static_cast<std::uint64_t>(id) << 20) ^
         word;
}

// Scanned structs whose size is exactly a size class.
template <std::size_t kBytes>
struct Words {
  std::uint64_t w[kBytes / 8];
};
// The issue's examples.
struct Buf {
  char data[32];
};
struct Pair {
  long a[2];
};
// Pointer-free ones (noscan spans; 16 bytes and more are not tiny).
template <std::size_t kBytes>
struct Bytes {
  unsigned char b[kBytes];
};

}  // namespace

template <std::size_t kBytes>
struct gofin::NoScan<Bytes<kBytes>> : std::true_type {};

namespace {

static_assert(sizeof(Buf) == 32 && sizeof(Pair) == 16);

template <class T>
void FillPattern(T* p, int id) {
  for (std::size_t k = 0; k < sizeof(T) / 8; ++k) {
    const std::uint64_t v = Pattern(id, k);
    std::memcpy(reinterpret_cast<char*>(p) + k * 8, &v, 8);
  }
}
template <class T>
bool HasPattern(const T* p, int id) {
  for (std::size_t k = 0; k < sizeof(T) / 8; ++k) {
    std::uint64_t v = 0;
    std::memcpy(&v, reinterpret_cast<const char*>(p) + k * 8, 8);
    if (v != Pattern(id, k)) return false;
  }
  return true;
}
template <class T>
int IdOf(const T* p) {
  std::uint64_t v = 0;
  std::memcpy(&v, p, 8);
  if (((v ^ kPatternTag) >> 36 & 0xFFF) != (g_end_run.load() & 0xFFF)) return -1;
  return static_cast<int>(((v ^ kPatternTag) >> 20) & 0xFFFF);
}

constexpr int kEnds = 32;
char* volatile g_ends[kEnds];           // bss: roots; they hold only end pointers
gofin::Root<char> g_large_end_root[4];  // the end pointers of large objects, in the root table
std::atomic<int> g_end_fin[kEnds];
std::atomic<int> g_end_bad{0};
std::atomic<int> g_end_found{0};

template <class T>
void EndFin(T* p) {
  const int id = IdOf(p);
  if (id == -1) return;  // an earlier check's object
  if (id < 0 || id >= kEnds || !HasPattern(p, id)) {
    g_end_bad.fetch_add(1);
    return;
  }
  g_end_fin[id].fetch_add(1);
}

// Drops the previous check's end pointers, lets its objects go, and starts a new run.
void ResetEnds() {
  for (auto& e : g_ends) e = nullptr;
  for (auto& r : g_large_end_root) r.reset();
  for (int i = 0; i < 4; ++i) GCAndDrain();
  g_end_run.fetch_add(1);
  for (auto& c : g_end_fin) c = 0;
  g_end_bad = 0;
  g_end_found = 0;
}

int EndFinTotal() {
  int n = 0;
  for (auto& c : g_end_fin) n += c.load();
  return n;
}

// kEnds objects, each followed (usually) by a filler of the same size class without a
// finalizer, so that an end pointer is the filler's first byte.
template <class T>
[[gnu::noinline]] void MakeEndPointers() {
  for (int i = 0; i < kEnds; ++i) {
    T* p = gofin::New<T>();
    (void)gofin::New<T>();
    FillPattern(p, i);
    gofin::SetFinalizer(p, &EndFin<T>);
    g_ends[i] = reinterpret_cast<char*>(p) + sizeof(T);
  }
  g_end_found = kEnds;
}

// The last object of a span (base + size == the span's limit): its end pointer is the first
// byte of whatever follows the span. Allocates until `want` such objects turned up.
template <class T>
[[gnu::noinline]] void MakeSpanEndPointers(int want) {
  int found = 0;
  for (int n = 0; n < 200000 && found < want; ++n) {
    T* p = gofin::New<T>();
    const gofin::internal::ObjectRef r = gofin::internal::FindObject(p);
    if (r.span == nullptr || r.base + r.span->elemsize != r.span->limit) continue;
    FillPattern(p, found);
    gofin::SetFinalizer(p, &EndFin<T>);
    g_ends[found] = reinterpret_cast<char*>(p) + sizeof(T);
    ++found;
  }
  g_end_found = found;
}

// Checks every held end pointer's object through end - sizeof(T), in a thread.
template <class T>
int CountIntactThroughEnds(int n) {
  std::atomic<int> intact{0};
  InThread([&] {
    for (int i = 0; i < n; ++i) {
      const char* end = g_ends[i];
      if (end == nullptr) continue;
      if (end[-1] != static_cast<char>(Pattern(i, sizeof(T) / 8 - 1) >> 56)) continue;
      if (HasPattern(reinterpret_cast<const T*>(end - sizeof(T)), i)) intact.fetch_add(1);
    }
  });
  return intact.load();
}

template <class T>
void CheckEndPointersKeepTheirObjects(const char* what, bool span_end) {
  ResetEnds();
  InThread([span_end] {
    if (span_end) {
      MakeSpanEndPointers<T>(4);
    } else {
      MakeEndPointers<T>();
    }
  });
  const int n = Load(g_end_found);
  ASSERT_GT(n, 0) << what << ": no object at a span end turned up";
  for (int i = 0; i < 4; ++i) GCAndDrain();
  const int early = EndFinTotal();
  EXPECT_EQ(early, 0) << what << ": " << early << " of " << n
                      << " objects were finalized while a pointer one past their end "
                         "(reinterpret_cast<char*>(p) + sizeof(T), sizeof(T) = "
                      << sizeof(T) << ") was held in a global";
  EXPECT_EQ(Load(g_end_bad), 0);
  if (early == 0) {  // (a finalized object may be freed and reused by now: don't read it)
    EXPECT_EQ(CountIntactThroughEnds<T>(n), n) << what << ": contents read through end - 1";
  }
  // Control: without the end pointers every one of them is finalized, once.
  for (int i = 0; i < n; ++i) g_ends[i] = nullptr;
  CollectUntil(kMaxCycles, [n] { return EndFinTotal() >= n; });
  EXPECT_EQ(EndFinTotal(), n) << what << ": control, the end pointers dropped";
  for (int i = 0; i < n; ++i) EXPECT_EQ(Load(g_end_fin[i]), 1) << what << " #" << i;
  EXPECT_EQ(Load(g_end_bad), 0);
}

}  // namespace

TEST(EndPointer, ScannedSizeClassObjects) {
  CheckEndPointersKeepTheirObjects<Words<8>>("Words<8>", false);
  CheckEndPointersKeepTheirObjects<Pair>("Pair { long a[2]; }", false);
  CheckEndPointersKeepTheirObjects<Words<24>>("Words<24>", false);
  CheckEndPointersKeepTheirObjects<Buf>("Buf { char data[32]; }", false);
  CheckEndPointersKeepTheirObjects<Words<48>>("Words<48>", false);
  CheckEndPointersKeepTheirObjects<Words<64>>("Words<64>", false);
  CheckEndPointersKeepTheirObjects<Words<128>>("Words<128>", false);
  CheckEndPointersKeepTheirObjects<Words<1024>>("Words<1024>", false);
}

TEST(EndPointer, NoScanSizeClassObjects) {
  CheckEndPointersKeepTheirObjects<Bytes<16>>("Bytes<16> (noscan)", false);
  CheckEndPointersKeepTheirObjects<Bytes<32>>("Bytes<32> (noscan)", false);
  CheckEndPointersKeepTheirObjects<Bytes<48>>("Bytes<48> (noscan)", false);
}

// The end of a span's last object is the next span's first byte (8192 / size objects exactly
// fill a page for 16, 32, 64, 256) or the span's unused tail (48).
TEST(EndPointer, LastObjectOfASpan) {
  CheckEndPointersKeepTheirObjects<Pair>("Pair, last of its span", true);
  CheckEndPointersKeepTheirObjects<Buf>("Buf, last of its span", true);
  CheckEndPointersKeepTheirObjects<Words<48>>("Words<48>, last of its span", true);
  CheckEndPointersKeepTheirObjects<Words<64>>("Words<64>, last of its span", true);
  CheckEndPointersKeepTheirObjects<Words<256>>("Words<256>, last of its span", true);
  CheckEndPointersKeepTheirObjects<Bytes<32>>("Bytes<32> (noscan), last of its span", true);
}

namespace {

// Large objects (> 32 KiB): 64 KiB is exactly 8 pages, so its end is the next span's first
// byte; 40000 bytes leaves the end inside its 5-page span.
template <std::size_t kBytes>
struct LargeWords {
  std::uint64_t w[kBytes / 8];
};

template <class T>
[[gnu::noinline]] void MakeLargeEndPointers(int n) {
  for (int i = 0; i < n; ++i) {
    T* p = gofin::New<T>();
    (void)gofin::New<T>();  // usually right after it: the end pointer is this one's beginning
    FillPattern(p, i);
    gofin::SetFinalizer(p, &EndFin<T>);
    g_large_end_root[i] = reinterpret_cast<char*>(p) + sizeof(T);
    g_ends[i] = nullptr;
  }
  g_end_found = n;
}

template <class T>
int CountLargeIntact(int n) {
  std::atomic<int> intact{0};
  InThread([&] {
    for (int i = 0; i < n; ++i) {
      const char* end = g_large_end_root[i].get();
      if (end != nullptr && HasPattern(reinterpret_cast<const T*>(end - sizeof(T)), i)) {
        intact.fetch_add(1);
      }
    }
  });
  return intact.load();
}

template <class T>
void CheckLargeEndPointers(const char* what) {
  ResetEnds();
  constexpr int kLarge = 4;
  InThread([] { MakeLargeEndPointers<T>(kLarge); });
  for (int i = 0; i < 4; ++i) GCAndDrain();
  const int early = EndFinTotal();
  EXPECT_EQ(early, 0) << what << ": " << early << " of " << kLarge << " large objects ("
                      << sizeof(T)
                      << " bytes) were finalized while a Root held the pointer one past "
                         "their end";
  if (early == 0) {
    EXPECT_EQ(CountLargeIntact<T>(kLarge), kLarge) << what << ": contents";
  }
  for (auto& r : g_large_end_root) r.reset();
  CollectUntil(kMaxCycles, [] { return EndFinTotal() >= kLarge; });
  EXPECT_EQ(EndFinTotal(), kLarge) << what << ": control, the end pointers dropped";
  EXPECT_EQ(Load(g_end_bad), 0);
}

}  // namespace

TEST(EndPointer, LargeObjectPageMultiple) {
  static_assert(sizeof(LargeWords<65536>) % gofin::internal::kPageSize == 0);
  CheckLargeEndPointers<LargeWords<65536>>("64 KiB large object");
}

TEST(EndPointer, LargeObjectNotPageMultiple) {
  CheckLargeEndPointers<LargeWords<40000>>("40000-byte large object");
}

// ---------------------------------------------------------------------------------------------
// Inner pointers: only inside a real tiny block
// ---------------------------------------------------------------------------------------------

namespace {

constexpr const char* kErrNotAtBeginning =
    "runtime.SetFinalizer: pointer not at beginning of allocated block";

template <class F>
std::string ErrorOf(F&& f) {
  try {
    f();
  } catch (const gofin::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<other exception: ") + e.what() + ">";
  } catch (...) {
    return "<non-std exception>";
  }
  return "<no exception>";
}

struct S {
  void* p;
  long a;
  long b;
};
static_assert(sizeof(S) == 24);
struct NoScan24 {
  long a;
  long b;
  long c;
};

}  // namespace

template <>
struct gofin::NoScan<NoScan24> : std::true_type {};

namespace {

std::atomic<int> g_inner_runs{0};
void FinLong(long* /*unused*/) { g_inner_runs.fetch_add(1); }

// Tries SetFinalizer on `inner`; undoes it if it was accepted (so that nothing stays attached
// to the middle of an object).
template <class T>
std::string TrySetInner(T* inner) {
  std::string e = ErrorOf([&] { gofin::SetFinalizer(inner, &FinLong); });
  if (e == "<no exception>") {
    try {
      gofin::SetFinalizer(inner, nullptr);
    } catch (...) {
    }
  }
  return e;
}

std::uintptr_t BaseOf(const void* p) { return gofin::internal::FindObject(p).base; }

}  // namespace

// API.md: "pointer not at beginning of allocated block (an inner pointer, except inside a
// tiny block, as in Go)". The pointee type (long: small, pointer-free) must not matter; the
// block must really be a tiny block.
TEST(TinyInnerPointer, InnerFieldOfAScannedObjectIsRejected) {
  // (Not a 16-byte pointer-free object: it is in the tiny blocks' span class, where Go cannot
  // tell it from a tiny block either.)
  std::string errs[5];
  InThread([&] {
    auto* s = gofin::New<S>();
    errs[0] = TrySetInner(&s->a);
    errs[1] = TrySetInner(&s->b);
    errs[2] = ErrorOf([&] { gofin::SetFinalizer(&s->a, [](long*) {}); });
    if (errs[2] == "<no exception>") gofin::SetFinalizer(&s->a, nullptr);
    errs[3] = ErrorOf([&] { gofin::SetFinalizer(&s->a, nullptr); });
    auto* n24 = gofin::New<NoScan24>();
    errs[4] = TrySetInner(&n24->b);
    gofin::KeepAlive(s);
    gofin::KeepAlive(n24);
  });
  EXPECT_EQ(errs[0], kErrNotAtBeginning) << "&s->a of a scanned 24-byte S, function pointer";
  EXPECT_EQ(errs[1], kErrNotAtBeginning) << "&s->b of a scanned 24-byte S, function pointer";
  EXPECT_EQ(errs[2], kErrNotAtBeginning) << "&s->a of a scanned 24-byte S, captureless lambda";
  EXPECT_EQ(errs[3], kErrNotAtBeginning) << "&s->a of a scanned 24-byte S, removal";
  EXPECT_EQ(errs[4], kErrNotAtBeginning) << "&n->b of a noscan 24-byte object (not tiny)";
}

namespace {
std::atomic<int> g_tiny_runs[2];
std::atomic<int> g_tiny_bad{0};
std::atomic<std::uintptr_t> g_tiny_expect[2];

template <class I, int K>
void TinyFin(I* p) {
  if (Encode(p) != g_tiny_expect[K].load() || *p != static_cast<I>(0x1234 + K)) {
    g_tiny_bad.fetch_add(1);
  }
  g_tiny_runs[K].fetch_add(1);
}

// Two New<I> in one 16-byte tiny block, the second at an inner offset; finalizers on both.
template <class I>
[[gnu::noinline]] bool TwoInOneTinyBlock(std::string* errs) {
  for (int attempt = 0; attempt < 64; ++attempt) {
    I* a = gofin::New<I>(static_cast<I>(0x1234));
    I* b = gofin::New<I>(static_cast<I>(0x1235));
    if (BaseOf(a) == 0 || BaseOf(a) != BaseOf(b) ||
        BaseOf(b) == reinterpret_cast<std::uintptr_t>(b)) {
      continue;
    }
    g_tiny_expect[0] = Encode(a);
    g_tiny_expect[1] = Encode(b);
    errs[0] = ErrorOf([&] { gofin::SetFinalizer(a, &TinyFin<I, 0>); });
    errs[1] = ErrorOf([&] { gofin::SetFinalizer(b, &TinyFin<I, 1>); });
    return true;
  }
  return false;
}

template <class I>
void CheckTinyInnerAccepted(const char* what) {
  for (int i = 0; i < 3; ++i) GCAndDrain();
  g_tiny_runs[0] = 0;
  g_tiny_runs[1] = 0;
  g_tiny_bad = 0;
  std::string errs[2] = {"<not run>", "<not run>"};
  std::atomic<bool> found{false};
  InThread([&] { found = TwoInOneTinyBlock<I>(errs); });
  ASSERT_TRUE(found.load()) << what << ": could not get two objects into one tiny block";
  EXPECT_EQ(errs[0], "<no exception>") << what << ": the tiny block's first object";
  EXPECT_EQ(errs[1], "<no exception>") << what << ": an inner pointer of a tiny block";
  CollectUntil(kMaxCycles, [] { return Load(g_tiny_runs[0]) + Load(g_tiny_runs[1]) >= 2; });
  EXPECT_EQ(Load(g_tiny_runs[0]), 1) << what;
  EXPECT_EQ(Load(g_tiny_runs[1]), 1) << what;
  EXPECT_EQ(Load(g_tiny_bad), 0) << what;
}

}  // namespace

TEST(TinyInnerPointer, InnerPointerOfARealTinyBlockIsAccepted) {
  CheckTinyInnerAccepted<std::int32_t>("two New<std::int32_t>");
  CheckTinyInnerAccepted<std::int64_t>("two New<std::int64_t>");
}
