#pragma once
// Go: runtime/pprof's protomem.go and proto.go. Encodes heap-profile records as a gzipped
// profile.proto, symbolized in the process.
#include <cstdint>
#include <ostream>
#include <string_view>
#include <utility>
#include <vector>

namespace gofin::internal::profile {

// Go: runtime.MemProfileRecord. One per (stack, size) bucket, as of the most recently
// completed collection.
struct MemRecord {
  std::int64_t alloc_bytes = 0;
  std::int64_t free_bytes = 0;
  std::int64_t alloc_objects = 0;
  std::int64_t free_objects = 0;
  // Return addresses, innermost first, as the unwinder gave them: gofin's own frames (the
  // allocation functions) come first and are left out by the writer.
  std::vector<std::uintptr_t> stack;
};

// Go: pprof.writeHeapProto. rate is the sampling rate the records were taken at (Go's
// MemProfileRate), for the unsampling scale.
void WriteHeapProto(std::ostream& out, const std::vector<MemRecord>& records, std::int64_t rate);

// Go: writeHeapInternal's defaultSampleType. The overload above writes none, as Go's "heap"
// profile does (pprof then shows the last sample type, inuse_space); Go's "allocs" profile is
// the same records with "alloc_space".
void WriteHeapProto(std::ostream& out, const std::vector<MemRecord>& records, std::int64_t rate,
                    std::string_view default_sample_type);

// Go: scaleHeapSample. The (count, size) that a sampled (count, size) stands for at `rate`.
std::pair<std::int64_t, std::int64_t> ScaleHeapSample(std::int64_t count, std::int64_t size,
                                                      std::int64_t rate);

}  // namespace gofin::internal::profile
