#pragma once
// gofin's environment variables (Go: the GOGC, GOMEMLIMIT and GODEBUG parsing of proc.go and
// mgcpacer.go; mimalloc's options.c). Every GOFIN_* variable is read here, with secure_getenv
// (a setuid or setgid program ignores them all), and validated: a malformed value is ignored
// with one warning on stderr that names the variable, and the default stays (Go's rule).
#include <cstdint>
#include <optional>
#include <string>

namespace gofin::internal {

// The raw value, or nullptr when unset (or in a privileged process).
const char* EnvRaw(const char* name);
// A file path from the environment (GOFIN_TRACE, GOFIN_MEMPROFILE) with each "%p" replaced by
// the process id, so that the children of a program, which inherit the variable, each write
// a file of their own (LLVM_PROFILE_FILE's convention); "" when unset.
std::string EnvPath(const char* name);
// A whole decimal number in [lo, hi].
std::optional<std::int64_t> EnvInteger(const char* name, std::int64_t lo, std::int64_t hi);
// 1/0, on/off, true/false, yes/no.
std::optional<bool> EnvBool(const char* name);
// Go's GOGC: "off" (-1) or a whole number (a negative one also turns pacing off).
std::optional<int> EnvPercent(const char* name);
// Go's GOMEMLIMIT: "off" (INT64_MAX) or a byte count with an optional B/KiB/MiB/GiB/TiB suffix.
std::optional<std::int64_t> EnvByteCount(const char* name);
// One key of a GODEBUG-style list (`GOFIN_DEBUG=gctrace=1,checkfinalizers=1`): its value as a
// whole number in [lo, hi]; nullopt when the key is absent or malformed (with a warning).
std::optional<std::int64_t> EnvDebugKey(const char* name, const char* key, std::int64_t lo,
                                        std::int64_t hi);
// Parses a byte count as EnvByteCount does; -1 when malformed. For debug::SetMemoryLimit's
// callers and tests.
std::int64_t ParseByteCount(const char* s);
// Prints "gofin: ignoring NAME=VALUE: WHY" on stderr.
void WarnMalformedEnv(const char* name, const char* value, const char* why);

}  // namespace gofin::internal
