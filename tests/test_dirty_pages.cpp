// The OS layer of minor collections (heap/dirty_pages.hpp): the kernel's dirty-page tracking
// through userfaultfd's asynchronous write protection and the PAGEMAP_SCAN ioctl (Linux 6.7+).
//
// What gofin relies on, checked here on this test's own anonymous mapping (not the gofin heap,
// which this binary never touches):
//   - a page written after Protect is reported by ReadWritten, an untouched one is not, and
//     neither is one that was only read; only the written pages are reported, nothing around
//     them;
//   - a page stays reported until it is protected again, and is reported again after every
//     write that follows a new Protect;
//   - writes by the kernel on the program's behalf (read() from a pipe, process_vm_writev) into
//     a protected page succeed (no EFAULT, unlike mprotect-based tracking) and are reported;
//   - writes by another thread are reported, and protection never changes a page's contents;
//   - ReadWritten returns -1 (and tracking stays on) when the runs do not fit.
//
// The mapping is noted and registered once per process (the library keeps noted ranges for the
// process's lifetime), in two adjacent halves that must merge into one range. Every test
// protects the whole mapping first. Where the kernel lacks the feature (older kernels,
// seccomp, valgrind), every test is skipped.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "heap/dirty_pages.hpp"
#include "heap/heap.hpp"

namespace {

namespace dirty = gofin::internal::dirty;
using dirty::kOsPageSize;

constexpr std::size_t kPages = 64;
constexpr std::size_t kBytes = kPages * kOsPageSize;

struct Mapping {
  char* base = nullptr;
  bool noted = false;
  bool enabled = false;
};

// The process's one tracked mapping: mapped, noted (as two adjacent halves) and registered on
// first use. Enable() and NoteHeapRange() expect the heap lock, as in the library.
Mapping& TheMapping() {
  static Mapping m = [] {
    Mapping r;
    void* p = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return r;
    // Small pages only: the test counts 4 KiB pages.
    (void)madvise(p, kBytes, MADV_NOHUGEPAGE);
    r.base = static_cast<char*>(p);
    const auto lo = reinterpret_cast<std::uintptr_t>(p);
    std::lock_guard lock(gofin::internal::g_heap.lock);
    dirty::NoteHeapRange(lo, kBytes / 2);
    dirty::NoteHeapRange(lo + kBytes / 2, kBytes / 2);
    r.noted = true;
    r.enabled = dirty::Enable();
    return r;
  }();
  return m;
}

char* Page(std::size_t i) { return TheMapping().base + i * kOsPageSize; }

// The indices of this mapping's pages that ReadWritten reports; `ok` false when it fails.
std::set<std::size_t> WrittenPages(bool* ok = nullptr) {
  static std::vector<dirty::Region> out(std::size_t{1} << 14);
  const auto lo = reinterpret_cast<std::uintptr_t>(TheMapping().base);
  const std::uintptr_t hi = lo + kBytes;
  long n = 0;
  {
    std::lock_guard lock(gofin::internal::g_heap.lock);
    n = dirty::ReadWritten(out.data(), out.size());
  }
  if (ok != nullptr) *ok = n >= 0;
  std::set<std::size_t> pages;
  for (long r = 0; r < n; ++r) {
    const dirty::Region& reg = out[static_cast<std::size_t>(r)];
    for (std::uint64_t a = reg.start; a < reg.end; a += kOsPageSize) {
      if (a >= lo && a < hi) pages.insert(static_cast<std::size_t>((a - lo) / kOsPageSize));
    }
  }
  return pages;
}

bool ProtectAll() {
  const auto lo = reinterpret_cast<std::uintptr_t>(TheMapping().base);
  std::lock_guard lock(gofin::internal::g_heap.lock);
  return dirty::Protect(lo, lo + kBytes);
}

void WriteByte(std::size_t page, std::size_t offset, char value) {
  *static_cast<volatile char*>(Page(page) + offset) = value;
}

char ReadByte(std::size_t page, std::size_t offset) {
  return *static_cast<volatile char*>(Page(page) + offset);
}

class DirtyPages : public ::testing::Test {
 protected:
  void SetUp() override {
    const Mapping& m = TheMapping();
    ASSERT_NE(m.base, nullptr) << "mmap failed";
    ASSERT_TRUE(m.noted);
    if (!m.enabled || !dirty::Enabled()) {
      GTEST_SKIP() << "the kernel does not provide userfaultfd asynchronous write protection "
                      "with PAGEMAP_SCAN (Linux 6.7+), or forbids userfaultfd";
    }
    ASSERT_TRUE(ProtectAll());
    bool ok = false;
    const std::set<std::size_t> pages = WrittenPages(&ok);
    ASSERT_TRUE(ok) << "ReadWritten failed";
    ASSERT_TRUE(pages.empty()) << pages.size() << " pages reported right after Protect";
  }
  void TearDown() override {
    // Whatever a test did, tracking must still be on (a refusal would have turned it off).
    if (!IsSkipped()) {
      EXPECT_TRUE(dirty::Enabled());
    }
  }
};

std::set<std::size_t> Set(std::initializer_list<std::size_t> l) { return {l}; }

}  // namespace

TEST_F(DirtyPages, NotedHalvesMergeIntoOneRegisteredRange) {
  EXPECT_TRUE(dirty::Enabled());
  std::vector<dirty::Region> ranges(256);
  const std::size_t n = dirty::HeapRanges(ranges.data(), ranges.size());
  const auto lo = reinterpret_cast<std::uintptr_t>(TheMapping().base);
  int covering = 0;
  int overlapping = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (ranges[i].start < lo + kBytes && ranges[i].end > lo) ++overlapping;
    if (ranges[i].start == lo && ranges[i].end == lo + kBytes) ++covering;
  }
  EXPECT_EQ(covering, 1) << "the two adjacent halves were not merged into one range";
  EXPECT_EQ(overlapping, 1);
}

TEST_F(DirtyPages, UntouchedAndReadPagesAreNotReported) {
  // SetUp protected everything and saw nothing reported. Reads, of pages never populated and
  // of pages populated earlier, must not count as writes.
  long sum = 0;
  for (std::size_t i = 0; i < kPages; ++i) sum += ReadByte(i, 0) + ReadByte(i, kOsPageSize - 1);
  (void)sum;
  bool ok = false;
  EXPECT_EQ(WrittenPages(&ok), Set({}));
  EXPECT_TRUE(ok);
}

TEST_F(DirtyPages, WriteAfterProtectIsReportedAndNothingElse) {
  WriteByte(5, 100, 'x');
  EXPECT_EQ(WrittenPages(), Set({5}));
  EXPECT_EQ(ReadByte(5, 100), 'x');
  // More writes: separate pages and a run, the first and the last page of the mapping.
  WriteByte(0, 0, 'a');
  WriteByte(20, 7, 'b');
  WriteByte(21, 4095, 'c');
  WriteByte(22, 2048, 'd');
  WriteByte(kPages - 1, kOsPageSize - 1, 'e');
  EXPECT_EQ(WrittenPages(), Set({0, 5, 20, 21, 22, kPages - 1}));
  EXPECT_EQ(ReadByte(0, 0), 'a');
  EXPECT_EQ(ReadByte(20, 7), 'b');
  EXPECT_EQ(ReadByte(21, 4095), 'c');
  EXPECT_EQ(ReadByte(22, 2048), 'd');
  EXPECT_EQ(ReadByte(kPages - 1, kOsPageSize - 1), 'e');
}

TEST_F(DirtyPages, PageStaysReportedUntilProtectedAndIsReportedAgainAfterEachWrite) {
  for (std::size_t round = 0; round < 6; ++round) {
    SCOPED_TRACE(round);
    const std::size_t page = (round * 7) % kPages;
    // The same page every other round, a different one otherwise.
    const std::size_t target = round % 2 == 0 ? 9 : page;
    WriteByte(target, round, static_cast<char>('0' + round));
    EXPECT_EQ(WrittenPages(), Set({target}));
    // Reading the report does not reset it; a second write to the same page changes nothing.
    WriteByte(target, round + 1, 'y');
    EXPECT_EQ(WrittenPages(), Set({target}));
    ASSERT_TRUE(ProtectAll());
    EXPECT_EQ(WrittenPages(), Set({})) << "still reported after a new Protect";
    EXPECT_EQ(ReadByte(target, round), static_cast<char>('0' + round));
  }
}

TEST_F(DirtyPages, ProtectingAPartOfTheRangeLeavesTheRestReported) {
  for (std::size_t i = 10; i < 20; ++i) WriteByte(i, 1, 'p');
  const auto lo = reinterpret_cast<std::uintptr_t>(TheMapping().base);
  {
    std::lock_guard lock(gofin::internal::g_heap.lock);
    ASSERT_TRUE(dirty::Protect(lo + 12 * kOsPageSize, lo + 15 * kOsPageSize));
  }
  EXPECT_EQ(WrittenPages(), Set({10, 11, 15, 16, 17, 18, 19}));
  WriteByte(13, 2, 'q');
  EXPECT_EQ(WrittenPages(), Set({10, 11, 13, 15, 16, 17, 18, 19}));
}

TEST_F(DirtyPages, ProtectionNeverChangesContents) {
  for (std::size_t i = 0; i < kPages; ++i) {
    std::memset(Page(i), static_cast<int>(i + 1), kOsPageSize);
  }
  ASSERT_TRUE(ProtectAll());
  EXPECT_EQ(WrittenPages(), Set({}));
  int bad = 0;
  for (std::size_t i = 0; i < kPages; ++i) {
    for (std::size_t b = 0; b < kOsPageSize; b += 64) {
      if (ReadByte(i, b) != static_cast<char>(i + 1)) ++bad;
    }
  }
  EXPECT_EQ(bad, 0);
  // A write to a protected page lands, the rest of the page is intact.
  WriteByte(30, 64, 'z');
  EXPECT_EQ(ReadByte(30, 64), 'z');
  EXPECT_EQ(ReadByte(30, 0), static_cast<char>(31));
  EXPECT_EQ(ReadByte(30, 128), static_cast<char>(31));
  EXPECT_EQ(WrittenPages(), Set({30}));
}

// The property mprotect-based tracking lacks: the kernel writing into a protected page on the
// program's behalf succeeds, and the page is reported.
TEST_F(DirtyPages, ReadFromAPipeIntoAProtectedPageSucceedsAndIsReported) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  char msg[100];
  for (std::size_t i = 0; i < sizeof(msg); ++i) msg[i] = static_cast<char>('A' + i % 26);
  ASSERT_EQ(write(fds[1], msg, sizeof(msg)), static_cast<ssize_t>(sizeof(msg)));
  errno = 0;
  const ssize_t got = read(fds[0], Page(7) + 123, sizeof(msg));
  const int err = errno;
  EXPECT_EQ(got, static_cast<ssize_t>(sizeof(msg))) << "read() failed: " << std::strerror(err);
  EXPECT_EQ(std::memcmp(Page(7) + 123, msg, sizeof(msg)), 0);
  EXPECT_EQ(WrittenPages(), Set({7}));

  // A read straddling a page boundary: both pages are written and reported.
  ASSERT_TRUE(ProtectAll());
  ASSERT_EQ(write(fds[1], msg, sizeof(msg)), static_cast<ssize_t>(sizeof(msg)));
  errno = 0;
  const ssize_t got2 = read(fds[0], Page(41) - 50, sizeof(msg));
  const int err2 = errno;
  EXPECT_EQ(got2, static_cast<ssize_t>(sizeof(msg))) << "read() failed: " << std::strerror(err2);
  EXPECT_EQ(std::memcmp(Page(41) - 50, msg, sizeof(msg)), 0);
  EXPECT_EQ(WrittenPages(), Set({40, 41}));

  // Into a page that was never populated before it was protected (page 50 is only ever
  // written by this read).
  ASSERT_TRUE(ProtectAll());
  ASSERT_EQ(write(fds[1], msg, 8), 8);
  errno = 0;
  const ssize_t got3 = read(fds[0], Page(50) + 8, 8);
  const int err3 = errno;
  EXPECT_EQ(got3, 8) << "read() failed: " << std::strerror(err3);
  EXPECT_EQ(std::memcmp(Page(50) + 8, msg, 8), 0);
  EXPECT_EQ(WrittenPages(), Set({50}));
  close(fds[0]);
  close(fds[1]);
}

// The kernel's other way of writing user memory: pinning the page for writing (get_user_pages
// with FOLL_WRITE), as process_vm_writev, O_DIRECT reads and RDMA do.
TEST_F(DirtyPages, ProcessVmWritevIntoAProtectedPageSucceedsAndIsReported) {
  char msg[64];
  for (std::size_t i = 0; i < sizeof(msg); ++i) msg[i] = static_cast<char>('a' + i % 26);
  iovec local{msg, sizeof(msg)};
  iovec remote{Page(33) + 1000, sizeof(msg)};
  errno = 0;
  const ssize_t got = process_vm_writev(getpid(), &local, 1, &remote, 1, 0);
  if (got < 0 && (errno == ENOSYS || errno == EPERM)) {
    GTEST_SKIP() << "process_vm_writev is not available here: " << std::strerror(errno);
  }
  const int err = errno;
  EXPECT_EQ(got, static_cast<ssize_t>(sizeof(msg)))
      << "process_vm_writev failed: " << std::strerror(err);
  EXPECT_EQ(std::memcmp(Page(33) + 1000, msg, sizeof(msg)), 0);
  EXPECT_EQ(WrittenPages(), Set({33}));
}

TEST_F(DirtyPages, WritesByAnotherThreadAreReported) {
  std::thread([] {
    WriteByte(3, 3, 't');
    WriteByte(60, 60, 'u');
  }).join();
  EXPECT_EQ(WrittenPages(), Set({3, 60}));
  EXPECT_EQ(ReadByte(3, 3), 't');
  EXPECT_EQ(ReadByte(60, 60), 'u');

  // Several threads writing different pages at once, repeatedly.
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(round);
    ASSERT_TRUE(ProtectAll());
    std::atomic<int> go{0};
    std::vector<std::thread> threads;
    for (std::size_t t = 0; t < 4; ++t) {
      threads.emplace_back([&go, t, round] {
        go.fetch_add(1);
        while (go.load() < 4) std::this_thread::yield();
        for (std::size_t k = 0; k < 4; ++k) {
          WriteByte(t * 16 + k * 3 + static_cast<std::size_t>(round), k, 'w');
        }
      });
    }
    for (auto& th : threads) th.join();
    std::set<std::size_t> expect;
    for (std::size_t t = 0; t < 4; ++t) {
      for (std::size_t k = 0; k < 4; ++k)
        expect.insert(t * 16 + k * 3 + static_cast<std::size_t>(round));
    }
    EXPECT_EQ(WrittenPages(), expect);
  }
}

TEST_F(DirtyPages, ReadWrittenFailsWhenTheRunsDoNotFitAndTrackingStaysOn) {
  WriteByte(1, 0, '1');
  WriteByte(3, 0, '3');
  WriteByte(5, 0, '5');
  std::vector<dirty::Region> out(2);
  long n = 0;
  {
    std::lock_guard lock(gofin::internal::g_heap.lock);
    n = dirty::ReadWritten(out.data(), out.size());
  }
  EXPECT_EQ(n, -1) << "three separate runs reported into room for two";
  EXPECT_TRUE(dirty::Enabled());
  // Nothing was lost: with room, all three are there, each as a run of its own.
  std::vector<dirty::Region> big(std::size_t{1} << 14);
  {
    std::lock_guard lock(gofin::internal::g_heap.lock);
    n = dirty::ReadWritten(big.data(), big.size());
  }
  ASSERT_GE(n, 3);
  const auto lo = reinterpret_cast<std::uintptr_t>(TheMapping().base);
  int runs_here = 0;
  for (long r = 0; r < n; ++r) {
    const dirty::Region& reg = big[static_cast<std::size_t>(r)];
    if (reg.start >= lo && reg.end <= lo + kBytes) {
      ++runs_here;
      EXPECT_EQ(reg.end - reg.start, kOsPageSize);
    }
  }
  EXPECT_EQ(runs_here, 3);
  EXPECT_EQ(WrittenPages(), Set({1, 3, 5}));
}

TEST_F(DirtyPages, AdjacentWrittenPagesComeBackAsOneRun) {
  for (std::size_t i = 24; i < 32; ++i) WriteByte(i, 9, 'r');
  std::vector<dirty::Region> out(std::size_t{1} << 14);
  long n = 0;
  {
    std::lock_guard lock(gofin::internal::g_heap.lock);
    n = dirty::ReadWritten(out.data(), out.size());
  }
  ASSERT_GE(n, 1);
  const auto lo = reinterpret_cast<std::uintptr_t>(TheMapping().base);
  int runs_here = 0;
  for (long r = 0; r < n; ++r) {
    const dirty::Region& reg = out[static_cast<std::size_t>(r)];
    if (reg.start >= lo && reg.end <= lo + kBytes) {
      ++runs_here;
      EXPECT_EQ(reg.start, lo + 24 * kOsPageSize);
      EXPECT_EQ(reg.end, lo + 32 * kOsPageSize);
    }
  }
  EXPECT_EQ(runs_here, 1);
}
