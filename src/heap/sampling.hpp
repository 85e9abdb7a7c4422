#pragma once
// Go: MemProfileRate and the allocation sampling of malloc.go (mcache.nextSample, nextSample,
// fastexprand). On average one allocation per rate bytes is sampled for the heap profile;
// the distance between sample points is exponentially distributed, so that sampling is a
// Poisson process over the bytes allocated and the profile can be unsampled without bias.
//
// gofin charges a thread cache's run of objects whole when the slow path hands it out (see
// ThreadCache::TakeRun), not object by object: the allocation fast path stays a pointer bump
// with nothing added. A run that would cross the next sample point is cut short just before
// the object that crosses it, so that object is allocated by the slow path, which profiles
// it. Objects with destructors and large objects, always allocated by the slow path, are
// charged one at a time as Go charges every object.
#include <atomic>
#include <cstdint>

namespace gofin::internal {

// Go: MemProfileRate's default, 512 KiB.
inline constexpr int kDefaultMemProfileRate = 512 * 1024;

// The rate in effect, -1 until the environment was read (MemProfileRate reads it). Relaxed:
// the rate is a setting, and a thread that sees a change late samples a few more objects at
// the old rate (Go's rule: set it early).
inline constinit std::atomic<int> g_mem_profile_rate{-1};

// The rate in effect: GOFIN_MEMPROFILERATE at the first read, then SetMemProfileRate's.
int MemProfileRate();
// Returns the previous rate; a negative rate only reads it.
int SetMemProfileRate(int rate);

// Go: nextSample. The bytes to allocate before the next sampled allocation at this rate:
// 0 for rate 1 (every allocation), "never" for rate 0, else exponentially distributed with
// mean rate. rng is the calling thread cache's generator state.
std::int64_t NextSample(int rate, std::uint64_t& rng);

}  // namespace gofin::internal
