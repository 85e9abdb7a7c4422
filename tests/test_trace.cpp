// The GC timeline (API.md "GC timeline"; src/trace/trace.cpp): gofin::trace::Start/Stop and
// GOFIN_TRACE write a Chrome trace-event JSON file. Each test parses the file with a strict
// JSON library (nlohmann::json) and checks it as a viewer would read it:
//   - every phase appears (stop the world, mark, mark termination, sweep, finalizers,
//     cleanups, destructors), every event has the fields the format needs, and args.cycle
//     matches MemStats.NumGC: one collection stop per cycle, nothing outside the cycles run;
//   - per cycle, the stop contains the cycle's marks (every worker's) and its mark
//     termination, and finalizer, cleanup and destructor blocks come after the cycle they
//     name; the events of one thread nest properly (Perfetto's slices must);
//   - the heap counters and the thread and process names are there;
//   - a program that exits without Stop() leaves strict JSON (the exit handler closes the
//     array), and one cut short after a flush leaves an array that only lacks its bracket
//     (which the viewers accept);
//   - Start on an unwritable path fails with errno, Start twice fails, Stop twice is
//     harmless, and a second trace holds nothing of the first.
//
// The workload allocates and drops in threads that exit (a dead thread's stack is not scanned)
// so that its finalizers, cleanups and destructors really run.
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <gofin/gofin.hpp>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"
#include "trace/trace_writer.hpp"

extern char** environ;

namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

const std::set<std::string> kPhases = {"stop the world", "mark",     "mark termination", "sweep",
                                       "finalizers",     "cleanups", "destructors"};

// A GOFIN_TRACE in this binary's own environment starts a trace when the collector
// initializes; the tests start and stop their own (the children keep theirs: they test it).
class NoInheritedTrace : public ::testing::Environment {
 public:
  void SetUp() override {
    if (std::getenv("GOFIN_TRACE_TEST_CHILD") != nullptr) return;
    (void)gofin::ReadMemStats();  // initializes the collector, which reads GOFIN_TRACE
    gofin::trace::Stop();
  }
};
[[maybe_unused]] ::testing::Environment* const g_env =
    ::testing::AddGlobalTestEnvironment(new NoInheritedTrace);

std::string TempPath(const std::string& tag) {
  const char* dir = std::getenv("TMPDIR");
  return std::string(dir != nullptr && *dir != '\0' ? dir : "/tmp") + "/gofin_trace_" + tag + "_" +
         std::to_string(getpid()) + ".json";
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json ParseFile(const std::string& path) { return json::parse(ReadAll(path)); }

// Microseconds with three decimals, as written, back to exact nanoseconds.
std::int64_t Ns(const json& micros) { return std::llround(micros.get<double>() * 1000.0); }

std::uint64_t NumGC() { return gofin::ReadMemStats().NumGC; }

// ---- The workload ----

std::atomic<int> g_finalized{0};
std::atomic<int> g_cleaned{0};
std::atomic<int> g_destroyed{0};

struct Node {
  Node* next = nullptr;
  std::uint64_t payload[3] = {};
};

struct Finalized {
  std::uint64_t v[2] = {};
  void* p = nullptr;  // a scanned object, never a tiny block
};

struct WithDestructor {
  std::uint64_t v[3] = {};
  ~WithDestructor() { g_destroyed.fetch_add(1, std::memory_order_relaxed); }
};

constexpr int kObjectsPerThread = 300;

// Garbage lists of `nodes` nodes, `rounds` times: enough allocation for the pacer to start
// collections on whichever thread crosses the goal.
[[gnu::noinline]] void Churn(int rounds, int nodes) {
  for (int r = 0; r < rounds; ++r) {
    Node* head = nullptr;
    for (int i = 0; i < nodes; ++i) {
      auto* n = gofin::New<Node>();
      n->next = head;
      head = n;
    }
    gofin::KeepAlive(head);
  }
}

// Objects with finalizers, cleanups and destructors, dropped at once.
[[gnu::noinline]] void MakeDroppedObjects(int n) {
  for (int i = 0; i < n; ++i) {
    auto* f = gofin::New<Finalized>();
    gofin::SetFinalizer(
        f, [](Finalized* /*obj*/) { g_finalized.fetch_add(1, std::memory_order_relaxed); });
    auto* c = gofin::New<Finalized>();
    gofin::AddCleanup(
        c, [](int /*unused*/) { g_cleaned.fetch_add(1, std::memory_order_relaxed); }, 0);
    (void)gofin::New<WithDestructor>();
  }
}

void MutatorThread(int rounds) {
  for (int r = 0; r < rounds; ++r) {
    Churn(8, 4000);
    MakeDroppedObjects(kObjectsPerThread / rounds);
  }
}

// Three threads allocating (two mutators and, between them, this one), explicit GC() calls,
// then every queue drained.
void RunWorkload() {
  constexpr int kRounds = 6;
  std::thread a(MutatorThread, kRounds);
  std::thread b(MutatorThread, kRounds);
  gofin_test::InThread([] { Churn(24, 4000); });
  gofin::GC();
  a.join();
  b.join();
  // The objects' finalizers are queued by one cycle, run, and the objects freed by the next.
  for (int i = 0; i < 3; ++i) {
    gofin_test::ExactGC();
    ASSERT_TRUE(gofin::testing::BlockUntilEmptyFinalizerQueue(30s));
    ASSERT_TRUE(gofin::testing::BlockUntilEmptyCleanupQueue(30s));
    ASSERT_TRUE(gofin::testing::BlockUntilEmptyDestructorQueue(30s));
  }
}

// ---- Checks ----

struct Slice {
  std::string name;
  std::int64_t start = 0;
  std::int64_t end = 0;
  std::int64_t tid = 0;
  std::uint64_t cycle = 0;
  json args;
};

// Every event has what its kind needs; returns the complete events.
std::vector<Slice> CheckShape(const json& trace) {
  std::vector<Slice> slices;
  EXPECT_TRUE(trace.is_array());
  for (const json& e : trace) {
    EXPECT_TRUE(e.is_object()) << e;
    EXPECT_TRUE(e.contains("name") && e["name"].is_string()) << e;
    EXPECT_TRUE(e.contains("ph") && e["ph"].is_string()) << e;
    EXPECT_TRUE(e.contains("pid") && e["pid"].is_number_integer()) << e;
    const std::string ph = e.value("ph", "");
    if (ph == "X") {
      EXPECT_TRUE(kPhases.count(e["name"].get<std::string>()) == 1) << e;
      EXPECT_TRUE(e.contains("ts") && e["ts"].is_number()) << e;
      EXPECT_TRUE(e.contains("dur") && e["dur"].is_number() && e["dur"].get<double>() >= 0) << e;
      EXPECT_TRUE(e.contains("tid") && e["tid"].is_number_integer()) << e;
      EXPECT_TRUE(e.contains("args") && e["args"].contains("cycle") &&
                  e["args"]["cycle"].is_number_unsigned())
          << e;
      if (::testing::Test::HasFailure()) return slices;
      slices.push_back(Slice{e["name"], Ns(e["ts"]), Ns(e["ts"]) + Ns(e["dur"]),
                             e["tid"].get<std::int64_t>(), e["args"]["cycle"].get<std::uint64_t>(),
                             e["args"]});
    } else if (ph == "C") {
      EXPECT_EQ(e["name"], "heap");
      EXPECT_TRUE(e.contains("ts") && e["ts"].is_number()) << e;
      EXPECT_TRUE(e.contains("tid") && e["tid"].is_number_integer()) << e;
      EXPECT_TRUE(e["args"]["live"].is_number_unsigned()) << e;
      EXPECT_TRUE(e["args"]["goal"].is_number_unsigned()) << e;
    } else if (ph == "M") {
      EXPECT_TRUE(e["name"] == "thread_name" || e["name"] == "process_name") << e;
      EXPECT_TRUE(e.contains("tid") && e["tid"].is_number_integer()) << e;
      EXPECT_TRUE(e["args"]["name"].is_string()) << e;
    } else {
      ADD_FAILURE() << "unexpected event " << e;
    }
  }
  return slices;
}

// Perfetto draws one thread's complete events as a tree: two of them either nest or do not
// overlap at all.
void CheckNesting(std::vector<Slice> slices) {
  std::map<std::int64_t, std::vector<const Slice*>> by_tid;
  for (const Slice& s : slices) by_tid[s.tid].push_back(&s);
  for (auto& [tid, list] : by_tid) {
    std::sort(list.begin(), list.end(), [](const Slice* a, const Slice* b) {
      return a->start != b->start ? a->start < b->start : a->end > b->end;
    });
    std::vector<const Slice*> open;
    for (const Slice* s : list) {
      while (!open.empty() && open.back()->end <= s->start) open.pop_back();
      if (!open.empty()) {
        EXPECT_LE(s->end, open.back()->end)
            << "on thread " << tid << ", " << s->name << " " << s->args << " overlaps "
            << open.back()->name << " " << open.back()->args << " without nesting in it";
      }
      open.push_back(s);
    }
  }
}

std::map<std::int64_t, std::string> ThreadNames(const json& trace) {
  std::map<std::int64_t, std::string> names;
  for (const json& e : trace) {
    if (e["ph"] == "M" && e["name"] == "thread_name") {
      names[e["tid"].get<std::int64_t>()] = e["args"]["name"].get<std::string>();
    }
  }
  return names;
}

bool HasProcessName(const json& trace) {
  return std::any_of(trace.begin(), trace.end(),
                     [](const json& e) { return e["ph"] == "M" && e["name"] == "process_name"; });
}

std::uint64_t SumArg(const std::vector<Slice>& slices, const std::string& name,
                     const std::string& arg) {
  std::uint64_t sum = 0;
  for (const Slice& s : slices) {
    if (s.name == name) sum += s.args[arg].get<std::uint64_t>();
  }
  return sum;
}

// ---- Tests ----

TEST(Trace, RecordsEveryPhaseOfAProgram) {
  gofin_test::Watchdog watchdog("Trace.RecordsEveryPhaseOfAProgram");
  const std::string path = TempPath("program");
  const int finalized_before = g_finalized.load();
  const int cleaned_before = g_cleaned.load();
  const int destroyed_before = g_destroyed.load();
  const std::uint64_t before = NumGC();
  ASSERT_TRUE(gofin::trace::Start(path.c_str())) << std::strerror(errno);
  RunWorkload();
  const std::uint64_t after = NumGC();
  gofin::trace::Stop();
  const std::uint64_t after_stop = NumGC();
  ASSERT_GT(after, before + 3) << "the workload should have collected several times";
  EXPECT_EQ(g_finalized.load() - finalized_before, 2 * kObjectsPerThread);
  EXPECT_EQ(g_cleaned.load() - cleaned_before, 2 * kObjectsPerThread);
  EXPECT_EQ(g_destroyed.load() - destroyed_before, 2 * kObjectsPerThread);

  const std::string text = ReadAll(path);
  const json trace = json::parse(text);  // strict: the array is closed
  EXPECT_EQ(text.substr(text.size() - 3), "\n]\n");
  const std::vector<Slice> slices = CheckShape(trace);
  ASSERT_FALSE(::testing::Test::HasFailure());

  // Every phase, and every cycle's numbers within the cycles that ran.
  std::set<std::string> names;
  for (const Slice& s : slices) names.insert(s.name);
  EXPECT_EQ(names, kPhases);
  std::map<std::uint64_t, const Slice*> stops;  // the collection stop of each cycle
  std::map<std::uint64_t, const Slice*> terminations;
  for (const Slice& s : slices) {
    EXPECT_GE(s.cycle, before) << s.name << " " << s.args;
    EXPECT_LE(s.cycle, after_stop) << s.name << " " << s.args;
    if (s.name == "stop the world" && s.args["reason"] == "collection") {
      EXPECT_TRUE(stops.emplace(s.cycle, &s).second) << "two collection stops for " << s.cycle;
      EXPECT_GT(s.cycle, before);
    }
    if (s.name == "mark termination") {
      EXPECT_TRUE(terminations.emplace(s.cycle, &s).second) << "two terminations for " << s.cycle;
    }
    if (s.name == "sweep") {
      EXPECT_GE(s.args["spans"].get<std::uint64_t>(), 1U) << s.args;
      const std::string by = s.args["by"];
      EXPECT_TRUE(by == "lazy" || by == "background" || by == "finish") << s.args;
    }
  }
  for (std::uint64_t c = before + 1; c <= after; ++c) {
    EXPECT_EQ(stops.count(c), 1U) << "no stop for cycle " << c;
    EXPECT_EQ(terminations.count(c), 1U) << "no mark termination for cycle " << c;
  }

  // Per cycle: the stop contains the marks and the mark termination; the collecting thread
  // marks too (worker 0) and terminates the mark.
  for (const auto& [cycle, stop] : stops) {
    int marks_by_collector = 0;
    for (const Slice& s : slices) {
      if (s.cycle != cycle || (s.name != "mark" && s.name != "mark termination")) continue;
      EXPECT_LE(stop->start, s.start) << s.name << " of cycle " << cycle << " " << s.args;
      EXPECT_GE(stop->end, s.end) << s.name << " of cycle " << cycle << " " << s.args;
      if (s.name == "mark" && s.args["worker"] == 0) {
        EXPECT_EQ(s.tid, stop->tid);
        ++marks_by_collector;
      }
      if (s.name == "mark termination") {
        EXPECT_EQ(s.tid, stop->tid);
      }
    }
    EXPECT_GE(marks_by_collector, 1) << "cycle " << cycle;
    EXPECT_GE(stop->args["stopping_ns"].get<std::uint64_t>(), 0U);
  }

  // Finalizer, cleanup and destructor blocks come after the cycle that queued them: their
  // cycle's mark is over when they start.
  for (const Slice& s : slices) {
    if (s.name != "finalizers" && s.name != "cleanups" && s.name != "destructors") continue;
    if (auto t = terminations.find(s.cycle); t != terminations.end()) {
      EXPECT_GE(s.start, t->second->end) << s.name << " " << s.args;
    }
  }
  // Every one that ran was recorded (the blocks' counts add up to at least this test's own).
  EXPECT_GE(SumArg(slices, "finalizers", "finalizers"), 2U * kObjectsPerThread);
  EXPECT_GE(SumArg(slices, "cleanups", "cleanups"), 2U * kObjectsPerThread);
  EXPECT_GE(SumArg(slices, "destructors", "destructors"), 2U * kObjectsPerThread);

  CheckNesting(slices);

  // The heap counters: one as each cycle starts and one as it ends.
  std::size_t counters = 0;
  for (const json& e : trace) counters += e["ph"] == "C" ? 1 : 0;
  EXPECT_GE(counters, 2 * (after - before));

  // Every thread that has events has a name; gofin's own threads say which they are.
  const auto thread_names = ThreadNames(trace);
  std::set<std::string> labels;
  for (const Slice& s : slices) {
    ASSERT_EQ(thread_names.count(s.tid), 1U) << "no name for thread " << s.tid;
    labels.insert(thread_names.at(s.tid));
  }
  for (const char* want : {"main", "mutator", "gofin-finalizer", "gofin-cleanup", "gofin-dtor"}) {
    EXPECT_EQ(labels.count(want), 1U) << want;
  }
  for (const Slice& s : slices) {
    const std::string& label = thread_names.at(s.tid);
    if (label == "gofin-mark") {
      EXPECT_EQ(s.name, "mark");
    }
    if (label == "gofin-sweep") {
      EXPECT_EQ(s.args["by"], "background");
    }
    if (label == "gofin-finalizer" && s.name != "finalizers") {
      EXPECT_EQ(s.name, "sweep");
    }
  }
  EXPECT_TRUE(HasProcessName(trace));
  std::remove(path.c_str());
}

TEST(Trace, StartFailsOnAnUnwritablePath) {
  errno = 0;
  EXPECT_FALSE(gofin::trace::Start("/nonexistent-gofin-directory/trace.json"));
  EXPECT_EQ(errno, ENOENT);
  errno = 0;
  EXPECT_FALSE(gofin::trace::Start("/"));
  EXPECT_EQ(errno, EISDIR);
  // Nothing was started: a later Start works.
  const std::string path = TempPath("after_failure");
  ASSERT_TRUE(gofin::trace::Start(path.c_str()));
  gofin::trace::Stop();
  EXPECT_NO_THROW((void)ParseFile(path));
  std::remove(path.c_str());
}

TEST(Trace, StartTwiceFailsAndStopTwiceIsHarmless) {
  gofin::trace::Stop();  // not started: nothing happens
  const std::string first = TempPath("first");
  const std::string second = TempPath("second");
  std::remove(second.c_str());
  ASSERT_TRUE(gofin::trace::Start(first.c_str()));
  errno = 0;
  EXPECT_FALSE(gofin::trace::Start(second.c_str()));
  EXPECT_EQ(errno, EBUSY);
  EXPECT_NE(access(second.c_str(), F_OK), 0) << "the second Start created its file";
  gofin::GC();
  gofin::trace::Stop();
  gofin::trace::Stop();
  const json trace = ParseFile(first);
  EXPECT_FALSE(CheckShape(trace).empty());
  std::remove(first.c_str());
}

// A second trace holds only its own events: records made for the first and still in the
// threads' buffers are not carried over.
TEST(Trace, ASecondTraceHoldsNothingOfTheFirst) {
  const std::string first = TempPath("session1");
  const std::string second = TempPath("session2");
  ASSERT_TRUE(gofin::trace::Start(first.c_str()));
  gofin_test::InThread([] { Churn(4, 4000); });
  gofin::GC();
  gofin::trace::Stop();
  const std::uint64_t first_last = NumGC();
  gofin_test::InThread([] { Churn(4, 4000); });  // untraced cycles, maybe
  gofin::GC();
  const std::uint64_t second_from = NumGC();
  ASSERT_TRUE(gofin::trace::Start(second.c_str()));
  gofin::GC();
  gofin::trace::Stop();
  const std::vector<Slice> slices = CheckShape(ParseFile(second));
  ASSERT_FALSE(slices.empty());
  for (const Slice& s : slices) {
    EXPECT_GE(s.cycle, second_from) << s.name << " " << s.args;
    if (s.name == "stop the world" && s.args["reason"] == "collection") {
      EXPECT_GT(s.cycle, first_last);
    }
  }
  std::remove(first.c_str());
  std::remove(second.c_str());
}

// ---- Programs that end without Stop() ----

// Runs this test binary again, as a program started with GOFIN_TRACE=path, on one test.
int RunChild(const std::string& test, const std::string& path, const std::string& mode) {
  return gofin_test::RunSelfFiltered("TraceChild." + test,
                                     {"GOFIN_TRACE=" + path, "GOFIN_TRACE_TEST_CHILD=" + mode},
                                     std::chrono::minutes(2));
}

// The child: a short program traced through GOFIN_TRACE, which ends with exit(0) (the exit
// handler closes the file) or _exit(0) (nothing closes it: the file is as the last flush left
// it, as if the program had been killed).
TEST(TraceChild, ExitsWithoutStop) {
  const char* mode = std::getenv("GOFIN_TRACE_TEST_CHILD");
  if (mode == nullptr) GTEST_SKIP() << "run by Trace.*WithoutStop* in a child process";
  gofin_test::InThread([] {
    Churn(8, 4000);
    MakeDroppedObjects(50);
  });
  gofin::GC();
  gofin::GC();
  // What the writer writes between cycles (at most every 10 ms), written now: the file as a
  // flush leaves it.
  gofin::internal::trace::LockWriter();
  if (gofin::internal::trace::FileOpen()) gofin::internal::trace::WriteBuffered();
  gofin::internal::trace::UnlockWriter();
  std::fflush(nullptr);
  if (std::string(mode) == "exit") std::exit(0);
  _exit(0);
}

TEST(Trace, AProgramThatExitsWithoutStopLeavesStrictJson) {
  const std::string path = TempPath("exit");
  std::remove(path.c_str());
  ASSERT_EQ(RunChild("ExitsWithoutStop", path, "exit"), 0);
  const std::string text = ReadAll(path);
  json trace;
  ASSERT_NO_THROW(trace = json::parse(text)) << text.substr(0, 2000);
  const std::vector<Slice> slices = CheckShape(trace);
  int collections = 0;
  for (const Slice& s : slices) {
    collections += s.name == "stop the world" && s.args["reason"] == "collection" ? 1 : 0;
  }
  EXPECT_GE(collections, 2);
  EXPECT_TRUE(HasProcessName(trace));
  EXPECT_FALSE(ThreadNames(trace).empty());
  CheckNesting(slices);
  std::remove(path.c_str());
}

TEST(Trace, AProgramCutShortLeavesAnArrayMissingOnlyItsBracket) {
  const std::string path = TempPath("cut");
  std::remove(path.c_str());
  ASSERT_EQ(RunChild("ExitsWithoutStop", path, "_exit"), 0);
  const std::string text = ReadAll(path);
  ASSERT_FALSE(text.empty());
  EXPECT_FALSE(json::accept(text)) << "the array was closed";
  // What the viewers do with the JSON Array Format: the missing "]" is implied.
  json trace;
  ASSERT_NO_THROW(trace = json::parse(text + "\n]")) << text.substr(0, 2000);
  const std::vector<Slice> slices = CheckShape(trace);
  EXPECT_TRUE(std::any_of(slices.begin(), slices.end(), [](const Slice& s) {
    return s.name == "stop the world" && s.args["reason"] == "collection";
  }));
  std::remove(path.c_str());
}

}  // namespace
