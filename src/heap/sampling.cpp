#include "heap/sampling.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "heap/options.hpp"

namespace gofin::internal {

namespace {

int ReadRateFromEnvironment() {
  int rate = kDefaultMemProfileRate;
  if (const auto v = EnvInteger("GOFIN_MEMPROFILERATE", 0, std::numeric_limits<int>::max())) {
    rate = static_cast<int>(*v);
  }
  int expected = -1;
  // Two threads may read the environment at once: the first store wins, both agree.
  if (!g_mem_profile_rate.compare_exchange_strong(expected, rate, std::memory_order_relaxed))
    return expected;
  return rate;
}

constinit std::atomic<std::uint64_t> g_seeds{0};

// A fresh seed for each thread cache: caches are recycled at the same addresses and threads
// start at the same time, so neither alone makes two caches' sample points independent.
std::uint64_t NewSeed(const void* where) {
  std::uint64_t z =
      g_seeds.fetch_add(0x9e3779b97f4a7c15ULL, std::memory_order_relaxed) ^
      static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
      reinterpret_cast<std::uintptr_t>(where);
  // splitmix64's finalizer
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return z == 0 ? 1 : z;
}

// xorshift64*: cheap and good enough for sample distances (Go: cheaprand).
std::uint64_t NextRandom(std::uint64_t& s) {
  if (s == 0) s = NewSeed(&s);
  s ^= s >> 12;
  s ^= s << 25;
  s ^= s >> 27;
  return s * 0x2545f4914f6cdd1dULL;
}

}  // namespace

int MemProfileRate() {
  const int r = g_mem_profile_rate.load(std::memory_order_relaxed);
  return r >= 0 ? r : ReadRateFromEnvironment();
}

int SetMemProfileRate(int rate) {
  const int old = MemProfileRate();
  if (rate >= 0) g_mem_profile_rate.store(rate, std::memory_order_relaxed);
  return old;
}

std::int64_t NextSample(int rate, std::uint64_t& rng) {
  // "Never", with room for ThreadCache::ReturnRun's refunds (a run's bytes) to be added.
  if (rate == 0) return std::numeric_limits<std::int64_t>::max() / 2;
  if (rate == 1) return 0;
  // Go: fastexprand. x = -ln(q) * mean for q uniform in (0, 1]; Go caps the mean so that the
  // largest step (about 20 means) fits an int32, and so does gofin.
  const double mean = std::min(rate, 0x7000000);
  constexpr int kRandomBits = 26;
  const auto q = static_cast<double>((NextRandom(rng) >> (64 - kRandomBits)) + 1);
  double qlog = std::log2(q) - kRandomBits;
  if (qlog > 0) qlog = 0;
  constexpr double kMinusLn2 = -0.6931471805599453;
  return static_cast<std::int64_t>(qlog * (kMinusLn2 * mean)) + 1;
}

}  // namespace gofin::internal
