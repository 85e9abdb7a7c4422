#pragma once
// gofin: Go's garbage-collected heap and finalizers for C++. The one header to include.
#include "gofin/alloc.hpp"
#include "gofin/allocator.hpp"
#include "gofin/cleanup.hpp"
#include "gofin/error.hpp"
#include "gofin/finalizer.hpp"
#include "gofin/gc.hpp"
#include "gofin/profile.hpp"
#include "gofin/root.hpp"
#include "gofin/testing.hpp"
#include "gofin/thread.hpp"
#include "gofin/trace.hpp"
#include "gofin/weak.hpp"
