#pragma once
// Go 1.25: GODEBUG=checkfinalizers (mcheckmark.go: checkFinalizersAndCleanups), as
// GOFIN_DEBUG=checkfinalizers=1. After each mark, with the world still stopped, every
// finalizer and cleanup is checked for the two mistakes that keep one from ever running:
//   - its object is reachable from its own callable or argument (for a finalizer, also from
//     the object's own contents, as gofin marks them: a cycle back through the object);
//   - its object shares a tiny block with other values, which may keep the block alive.
// Go runs a checkmark mark per record; gofin walks the heap from the record's roots with a
// visited set of its own, in memory mapped for it (nothing may call malloc while the world is
// stopped), and stops as soon as the object is found. The findings, with the type and the
// file:line of each registration (SetFinalizer/AddCleanup capture gofin::SourceLocation while
// the check is on, kept as a record of kind kCheckFinalizer on the object), are printed once
// the world runs again, with the queue lengths. Go then throws; gofin only reports, so that a
// test suite runs to its end. Off by default: then nothing of this runs.
namespace gofin::internal {

// Reads GOFIN_DEBUG once (the collector's initialization).
void InitCheckFinalizers();
bool CheckFinalizersEnabled();
// With the world stopped and marking done.
void CheckFinalizersStopped();
// After the world restarted: the findings of the last check and the queue lengths, on stderr.
void ReportCheckFinalizers();

}  // namespace gofin::internal
