#pragma once
// Go: sizeclasses.go, msize.go. The size-class table is Go's, so that a reader of the Go runtime
// recognises every span: 67 small classes up to 32 KiB, each with the number of 8 KiB pages
// a span of that class takes.
#include <array>
#include <cstddef>
#include <cstdint>

namespace gofin::internal {

inline constexpr std::size_t kPageShift = 13;
inline constexpr std::size_t kPageSize = std::size_t{1} << kPageShift;  // Go: _PageSize
inline constexpr std::size_t kMaxSmallSize = 32768;                     // Go: _MaxSmallSize
inline constexpr std::size_t kTinySize = 16;                            // Go: maxTinySize
inline constexpr std::size_t kNumSizeClasses = 68;                      // Go: _NumSizeClasses
inline constexpr std::size_t kSmallSizeDiv = 8;
inline constexpr std::size_t kSmallSizeMax = 1024;
inline constexpr std::size_t kLargeSizeDiv = 128;

inline constexpr std::array<std::uint16_t, kNumSizeClasses> kClassToSize = {
    0,     8,     16,    24,    32,    48,    64,    80,    96,    112,   128,   144,  160,   176,
    192,   208,   224,   240,   256,   288,   320,   352,   384,   416,   448,   480,  512,   576,
    640,   704,   768,   896,   1024,  1152,  1280,  1408,  1536,  1792,  2048,  2304, 2688,  3072,
    3200,  3456,  4096,  4864,  5376,  6144,  6528,  6784,  6912,  8192,  9472,  9728, 10240, 10880,
    12288, 13568, 14336, 16384, 18432, 19072, 20480, 21760, 24576, 27264, 28672, 32768};

inline constexpr std::array<std::uint8_t, kNumSizeClasses> kClassToPages = {
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,  1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 2, 1, 2, 1, 3, 2,  3, 1, 3,
    2, 3, 4, 5, 6, 1, 7, 6, 5, 4, 3, 5, 7, 2, 9, 7, 5, 8, 3, 10, 7, 4};

// Go: class_to_divmagic. (offset * magic) >> 32 == offset / size for every offset inside a
// span of the class, which turns the collector's object-index division into a multiply.
constexpr std::array<std::uint32_t, kNumSizeClasses> MakeDivMagic() {
  std::array<std::uint32_t, kNumSizeClasses> m{};
  for (std::size_t c = 1; c < kNumSizeClasses; ++c) {
    m[c] = static_cast<std::uint32_t>(~std::uint32_t{0} / kClassToSize[c] + 1);
  }
  return m;
}
inline constexpr auto kClassToDivMagic = MakeDivMagic();

// Go: size_to_class8 / size_to_class128, derived from the table rather than transcribed.
constexpr std::array<std::uint8_t, kSmallSizeMax / kSmallSizeDiv + 1> MakeSizeToClass8() {
  std::array<std::uint8_t, kSmallSizeMax / kSmallSizeDiv + 1> t{};
  std::size_t c = 0;
  for (std::size_t i = 0; i < t.size(); ++i) {
    const std::size_t size = i * kSmallSizeDiv;
    while (kClassToSize[c] < size) ++c;
    t[i] = static_cast<std::uint8_t>(c);
  }
  return t;
}
constexpr std::array<std::uint8_t, (kMaxSmallSize - kSmallSizeMax) / kLargeSizeDiv + 1>
MakeSizeToClass128() {
  std::array<std::uint8_t, (kMaxSmallSize - kSmallSizeMax) / kLargeSizeDiv + 1> t{};
  std::size_t c = 0;
  for (std::size_t i = 0; i < t.size(); ++i) {
    const std::size_t size = kSmallSizeMax + i * kLargeSizeDiv;
    while (kClassToSize[c] < size) ++c;
    t[i] = static_cast<std::uint8_t>(c);
  }
  return t;
}
inline constexpr auto kSizeToClass8 = MakeSizeToClass8();
inline constexpr auto kSizeToClass128 = MakeSizeToClass128();

// Precondition: 0 < size <= kMaxSmallSize.
constexpr std::uint8_t SizeToClass(std::size_t size) {
  if (size <= kSmallSizeMax - 8) {
    return kSizeToClass8[(size + kSmallSizeDiv - 1) / kSmallSizeDiv];
  }
  return kSizeToClass128[(size - kSmallSizeMax + kLargeSizeDiv - 1) / kLargeSizeDiv];
}

constexpr std::size_t ClassObjects(std::size_t c) {
  return (kClassToPages[c] * kPageSize) / kClassToSize[c];
}

// Go: spanClass. Go packs size class and noscan; gofin adds a third bit for objects whose
// C++ type has a destructor, so that only those spans carry a destructor table.
struct SpanClass {
  std::uint16_t value = 0;
  static constexpr SpanClass Make(std::size_t sizeclass, bool noscan, bool dtor) {
    return SpanClass{
        static_cast<std::uint16_t>((sizeclass << 2) | (dtor ? 2U : 0U) | (noscan ? 1U : 0U))};
  }
  [[nodiscard]] constexpr std::size_t SizeClass() const { return value >> 2; }
  [[nodiscard]] constexpr bool NoScan() const { return (value & 1U) != 0; }
  [[nodiscard]] constexpr bool HasDtor() const { return (value & 2U) != 0; }
};
inline constexpr std::size_t kNumSpanClasses = kNumSizeClasses << 2;

}  // namespace gofin::internal
