// GOFIN_DEBUG=checkfinalizers=1 (Go 1.25's GODEBUG=checkfinalizers): after each collection,
// every finalizer or cleanup whose object is reachable from its own callable or argument, and
// every one on an object in a tiny block, is reported on stderr with the file:line of its
// registration; good registrations are not.
//
// The test re-executes this binary with the variable set and a filter that selects the
// CheckFinalizersChild test (skipped otherwise), which makes registrations at known lines and
// prints those lines on stdout; the parent reads both streams.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <gofin/gofin.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Node {
  Node* next = nullptr;
  long value = 0;
};
struct Holder {
  Node* node = nullptr;
};

// Each registration prints "BAD <line>" or "GOOD <line>" for the parent.
[[gnu::noinline]] void Register() {
  // Bad: the finalizer's capture reaches the object through another object.
  {
    auto* o = gofin::New<Node>();
    auto* h = gofin::New<Holder>();
    h->node = o;
    std::printf("BAD %d\n", __LINE__ + 1);
    gofin::SetFinalizer(o, [h](Node*) { gofin::KeepAlive(h); });
  }
  // Bad: a cycle back through the object's own contents (o -> p -> o).
  {
    auto* o = gofin::New<Node>();
    auto* p = gofin::New<Node>();
    o->next = p;
    p->next = o;
    std::printf("BAD %d\n", __LINE__ + 1);
    gofin::SetFinalizer(o, [](Node*) {});
  }
  // Bad: the cleanup's argument reaches the object.
  {
    auto* o = gofin::New<Node>();
    auto* h = gofin::New<Holder>();
    h->node = o;
    std::printf("BAD %d\n", __LINE__ + 1);
    gofin::AddCleanup(
        o, [](Holder*) {}, h);
  }
  // Bad: an object in a tiny block.
  {
    auto* t = gofin::New<long>(7);
    std::printf("BAD %d\n", __LINE__ + 1);
    gofin::AddCleanup(
        t, [](int) {}, 1);
  }
  // Good: independent callables and arguments.
  {
    auto* o = gofin::New<Node>();
    std::printf("GOOD %d\n", __LINE__ + 1);
    gofin::SetFinalizer(o, [](Node* n) { n->value = 1; });
    std::printf("GOOD %d\n", __LINE__ + 1);
    gofin::AddCleanup(
        o, [](int) {}, 2);
    auto* other = gofin::New<Node>();
    auto* h = gofin::New<Holder>();
    h->node = other;
    std::printf("GOOD %d\n", __LINE__ + 1);
    gofin::AddCleanup(
        o, [](Holder*) {}, h);
  }
  std::fflush(stdout);
}

TEST(CheckFinalizersChild, Registrations) {
  if (std::getenv("GOFIN_TEST_CHECKFIN_CHILD") == nullptr) GTEST_SKIP() << "child only";
  std::thread(Register).join();
  gofin::GC();
}

// Runs this binary's child test with the check on; returns its stdout and stderr.
bool RunChild(std::string& out, std::string& err) {
  int po[2];
  int pe[2];
  if (pipe(po) != 0 || pipe(pe) != 0) return false;
  const pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    dup2(po[1], 1);
    dup2(pe[1], 2);
    close(po[0]);
    close(pe[0]);
    setenv("GOFIN_DEBUG", "checkfinalizers=1", 1);
    setenv("GOFIN_TEST_CHECKFIN_CHILD", "1", 1);
    execl("/proc/self/exe", "test_check_finalizers",
          "--gtest_filter=CheckFinalizersChild.Registrations", nullptr);
    _exit(127);
  }
  close(po[1]);
  close(pe[1]);
  auto drain = [](int fd, std::string& s) {
    char buf[4096];
    for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;)
      s.append(buf, static_cast<std::size_t>(n));
    close(fd);
  };
  std::thread t([&] { drain(po[0], out); });
  drain(pe[0], err);
  t.join();
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

TEST(CheckFinalizers, ReportsExactlyTheBadRegistrationsWithTheirLines) {
  std::string out;
  std::string err;
  ASSERT_TRUE(RunChild(out, err)) << "child failed; stderr:\n" << err;
  std::set<std::string> bad;
  std::set<std::string> good;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("BAD ", 0) == 0) bad.insert(line.substr(4));
    if (line.rfind("GOOD ", 0) == 0) good.insert(line.substr(5));
  }
  ASSERT_EQ(bad.size(), 4U) << out;
  ASSERT_EQ(good.size(), 3U) << out;
  EXPECT_NE(err.find("WARNING: LIKELY CLEANUP/FINALIZER ISSUES"), std::string::npos) << err;
  EXPECT_NE(err.find("checkfinalizers: queue: "), std::string::npos) << err;
  // Every bad registration's line, in this file, and no good one's.
  for (const std::string& l : bad) {
    EXPECT_NE(err.find("test_check_finalizers.cpp:" + l + "\n"), std::string::npos)
        << "line " << l << " not reported:\n"
        << err;
  }
  for (const std::string& l : good) {
    EXPECT_EQ(err.find("test_check_finalizers.cpp:" + l + "\n"), std::string::npos)
        << "good line " << l << " reported:\n"
        << err;
  }
  // One report per bad registration: two finalizers and two cleanups.
  auto count = [&](const std::string& what) {
    std::size_t n = 0;
    for (std::size_t at = err.find(what); at != std::string::npos; at = err.find(what, at + 1)) ++n;
    return n;
  };
  EXPECT_EQ(count("Has finalizer at "), 2U) << err;
  EXPECT_EQ(count("Has cleanup at "), 2U) << err;
  EXPECT_EQ(count("is reachable from finalizer"), 2U) << err;
  EXPECT_EQ(count("is reachable from cleanup or cleanup argument"), 1U) << err;
  EXPECT_EQ(count("is in a tiny block"), 1U) << err;
  EXPECT_NE(err.find("::Node at "), std::string::npos) << err;
  EXPECT_NE(err.find("Value of type long at "), std::string::npos) << err;
}

TEST(CheckFinalizers, OffByDefault) {
  // This process runs without the variable: registrations record nothing, cycles print nothing.
  EXPECT_FALSE(gofin::detail::CheckFinalizersOn());
}

}  // namespace
