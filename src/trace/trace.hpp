#pragma once
// The GC timeline's internal interface (trace.cpp has the design): what the collector's layers
// include to record phases (trace_buffer.hpp) and to let the writer flush (trace_writer.hpp).
// src/trace depends on nothing of gofin's, so that gc/, finalizer/ and cleanup/ may all call
// it, as they call heap/.
#include "trace/trace_buffer.hpp"
#include "trace/trace_writer.hpp"

namespace gofin::internal::trace {

// GOFIN_TRACE's value, read at the collector's initialization: starts the trace, or says on
// stderr why the file cannot be written (the program goes on without a trace).
void StartFromEnv(const char* path);

}  // namespace gofin::internal::trace
