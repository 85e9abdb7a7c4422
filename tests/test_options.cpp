// The environment variables (src/heap/options.cpp): every GOFIN_* variable is validated, and a
// malformed value is ignored with a warning naming it while the default stays (Go's rule: an
// invalid GOGC is ignored, not read as 0).
#include <gtest/gtest.h>
#include <stdlib.h>  // setenv, unsetenv
#include <unistd.h>

#include <climits>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <set>
#include <string>

#include "heap/options.hpp"

namespace {

using gofin::internal::EnvBool;
using gofin::internal::EnvByteCount;
using gofin::internal::EnvDebugKey;
using gofin::internal::EnvInteger;
using gofin::internal::EnvPercent;

constexpr const char* kVar = "GOFIN_TEST_OPTION";

// Sets kVar for one scope.
class EnvValue {
 public:
  explicit EnvValue(const char* v) { setenv(kVar, v, 1); }
  ~EnvValue() { unsetenv(kVar); }
  EnvValue(const EnvValue&) = delete;
  EnvValue& operator=(const EnvValue&) = delete;
};

// What a call printed on stderr.
template <class F>
std::string Stderr(F&& f) {
  ::testing::internal::CaptureStderr();
  f();
  return ::testing::internal::GetCapturedStderr();
}

TEST(Options, UnsetIsNoValueAndNoWarning) {
  unsetenv(kVar);
  EXPECT_EQ(Stderr([] {
              EXPECT_FALSE(EnvPercent(kVar).has_value());
              EXPECT_FALSE(EnvInteger(kVar, 1, 8).has_value());
              EXPECT_FALSE(EnvBool(kVar).has_value());
              EXPECT_FALSE(EnvByteCount(kVar).has_value());
            }),
            "");
}

TEST(Options, PercentIsOffOrAWholeNumber) {
  {
    const EnvValue v("200");
    EXPECT_EQ(EnvPercent(kVar), 200);
  }
  {
    const EnvValue v("off");
    EXPECT_EQ(EnvPercent(kVar), -1);
  }
  {
    const EnvValue v("-5");
    EXPECT_EQ(EnvPercent(kVar), -1);
  }
  for (const char* bad : {"abc", "", "12x", "1e3", "99999999999"}) {
    const EnvValue v(bad);
    const std::string err = Stderr([] { EXPECT_FALSE(EnvPercent(kVar).has_value()); });
    EXPECT_NE(err.find(kVar), std::string::npos) << "no warning naming the variable for " << bad;
  }
}

TEST(Options, IntegerIsCheckedAgainstItsRange) {
  {
    const EnvValue v("4");
    EXPECT_EQ(EnvInteger(kVar, 1, 256), 4);
  }
  for (const char* bad : {"0", "257", "-1", "two", "3 "}) {
    const EnvValue v(bad);
    const std::string err = Stderr([] { EXPECT_FALSE(EnvInteger(kVar, 1, 256).has_value()); });
    EXPECT_NE(err.find(kVar), std::string::npos) << bad;
  }
}

TEST(Options, BoolTakesTheUsualSpellings) {
  for (const char* yes : {"1", "on", "true", "yes"}) {
    const EnvValue v(yes);
    EXPECT_EQ(EnvBool(kVar), true) << yes;
  }
  for (const char* no : {"0", "off", "false", "no"}) {
    const EnvValue v(no);
    EXPECT_EQ(EnvBool(kVar), false) << no;
  }
  const EnvValue v("maybe");
  EXPECT_NE(Stderr([] { EXPECT_FALSE(EnvBool(kVar).has_value()); }).find(kVar), std::string::npos);
}

TEST(Options, ByteCountsAsGoMemLimit) {
  {
    const EnvValue v("512MiB");
    EXPECT_EQ(EnvByteCount(kVar), std::int64_t{512} << 20);
  }
  {
    const EnvValue v("1024");
    EXPECT_EQ(EnvByteCount(kVar), 1024);
  }
  {
    const EnvValue v("off");
    EXPECT_EQ(EnvByteCount(kVar), INT64_MAX);
  }
  for (const char* bad : {"12MB", "-1", "GiB", "1.5GiB"}) {
    const EnvValue v(bad);
    EXPECT_NE(Stderr([] { EXPECT_FALSE(EnvByteCount(kVar).has_value()); }).find(kVar),
              std::string::npos)
        << bad;
  }
}

TEST(Options, DebugKeysAreFoundInAList) {
  {
    const EnvValue v("gctrace=1");
    EXPECT_EQ(EnvDebugKey(kVar, "gctrace", 0, 2), 1);
  }
  {
    const EnvValue v("checkfinalizers=1,gctrace=2");
    EXPECT_EQ(EnvDebugKey(kVar, "gctrace", 0, 2), 2);
    EXPECT_EQ(EnvDebugKey(kVar, "checkfinalizers", 0, 1), 1);
    EXPECT_FALSE(EnvDebugKey(kVar, "other", 0, 1).has_value());
  }
  const EnvValue v("gctrace=yes");
  EXPECT_NE(Stderr([] { EXPECT_FALSE(EnvDebugKey(kVar, "gctrace", 0, 2).has_value()); }).find(kVar),
            std::string::npos);
}

}  // namespace

// GOFIN_TRACE and GOFIN_MEMPROFILE: "%p" becomes the process id, so that children that inherit
// the variable write files of their own.
TEST(Options, PathsExpandThePid) {
  const std::string pid = std::to_string(getpid());
  {
    const EnvValue v("/tmp/gc-%p.json");
    EXPECT_EQ(gofin::internal::EnvPath(kVar), "/tmp/gc-" + pid + ".json");
  }
  {
    const EnvValue v("%p%p-%d/x");
    EXPECT_EQ(gofin::internal::EnvPath(kVar), pid + pid + "-%d/x");
  }
  {
    const EnvValue v("plain.json");
    EXPECT_EQ(gofin::internal::EnvPath(kVar), "plain.json");
  }
  unsetenv(kVar);
  EXPECT_EQ(gofin::internal::EnvPath(kVar), "");
}

// Every GOFIN_* variable the library reads has its row in the README's environment table, and
// every row names a variable the library reads: the table is the users' only list of them.
TEST(Options, ReadmeListsEveryVariableTheLibraryReads) {
  namespace fs = std::filesystem;
  const fs::path root = GOFIN_SOURCE_DIR;
  const std::regex literal("\"(GOFIN_[A-Z_]+)\"");
  std::set<std::string> read;
  for (const auto& entry : fs::recursive_directory_iterator(root / "src")) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path());
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (std::sregex_iterator it(text.begin(), text.end(), literal), end; it != end; ++it) {
      read.insert((*it)[1]);
    }
  }
  ASSERT_FALSE(read.empty());
  std::ifstream readme(root / "README.md");
  ASSERT_TRUE(readme) << "README.md not found under " << root;
  const std::regex row(R"(^\| `(GOFIN_[A-Z_]+)` \|)");
  std::set<std::string> documented;
  for (std::string line; std::getline(readme, line);) {
    std::smatch m;
    if (std::regex_search(line, m, row)) documented.insert(m[1]);
  }
  for (const std::string& v : read) {
    EXPECT_TRUE(documented.count(v) != 0) << v << " is read in src/ but has no README row";
  }
  for (const std::string& v : documented) {
    EXPECT_TRUE(read.count(v) != 0) << v << " has a README row but src/ never reads it";
  }
}
