# Run by ctest (test "consumer_package") as `cmake -D... -P ConsumerPackageTest.cmake`.
#  1. cmake --install <build> --prefix <build>/consumer-prefix
#  2. configure, build and run tests/consumer/ (find_package(gofin CONFIG REQUIRED))
#  3. the same for the C API: tests/consumer_c/ (a C-only project) builds tests/c/test_c_api.c
#  4. compile and run tests/consumer/pkgconfig_main.cpp with `pkg-config --cflags --libs gofin`
#     and tests/c/test_c_api.c with `cc -std=c11 ... pkg-config --cflags --libs gofin-c`
# Any failing step is a FATAL_ERROR, which makes the test fail.
cmake_minimum_required(VERSION 3.25)

foreach(var GOFIN_BUILD_DIR GOFIN_CONSUMER_SOURCE_DIR GOFIN_GENERATOR GOFIN_CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "consumer_package: ${var} not set")
  endif()
endforeach()
if(NOT GOFIN_CONFIG)
  set(GOFIN_CONFIG Release)
endif()

set(prefix "${GOFIN_BUILD_DIR}/consumer-prefix")
set(work "${GOFIN_BUILD_DIR}/consumer-work")
file(REMOVE_RECURSE "${prefix}" "${work}")
file(MAKE_DIRECTORY "${work}")

function(run_step name)
  message(STATUS "consumer_package: ${name}: ${ARGN}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc STREQUAL "0")
    message(FATAL_ERROR "consumer_package: step '${name}' FAILED (exit status: ${rc})")
  endif()
endfunction()

# 1. Install.
run_step(install "${CMAKE_COMMAND}" --install "${GOFIN_BUILD_DIR}"
  --config "${GOFIN_CONFIG}" --prefix "${prefix}")

# 2. find_package consumer.
set(cmake_args
  -S "${GOFIN_CONSUMER_SOURCE_DIR}" -B "${work}/cmake-build"
  -G "${GOFIN_GENERATOR}"
  "-DCMAKE_BUILD_TYPE=${GOFIN_CONFIG}"
  "-DCMAKE_PREFIX_PATH=${prefix}"
  "-DCMAKE_CXX_COMPILER=${GOFIN_CXX_COMPILER}"
  "-DCMAKE_CXX_FLAGS=${GOFIN_CXX_FLAGS}"
  "-DCMAKE_EXE_LINKER_FLAGS=${GOFIN_EXE_LINKER_FLAGS}")
if(GOFIN_C_COMPILER)
  list(APPEND cmake_args "-DCMAKE_C_COMPILER=${GOFIN_C_COMPILER}")
endif()
run_step(configure "${CMAKE_COMMAND}" ${cmake_args})
run_step(build "${CMAKE_COMMAND}" --build "${work}/cmake-build" --config "${GOFIN_CONFIG}")
set(exe "${work}/cmake-build/gofin_consumer")
if(NOT EXISTS "${exe}")
  set(exe "${work}/cmake-build/${GOFIN_CONFIG}/gofin_consumer")
endif()
run_step(run-cmake-consumer "${exe}")

# 3. find_package from a C-only project.
get_filename_component(tests_dir "${GOFIN_CONSUMER_SOURCE_DIR}" DIRECTORY)
set(c_source "${tests_dir}/c/test_c_api.c")
set(c_cmake_args
  -S "${tests_dir}/consumer_c" -B "${work}/cmake-build-c"
  -G "${GOFIN_GENERATOR}"
  "-DCMAKE_BUILD_TYPE=${GOFIN_CONFIG}"
  "-DCMAKE_PREFIX_PATH=${prefix}"
  "-DGOFIN_C_TEST_SOURCE=${c_source}"
  "-DCMAKE_CXX_COMPILER=${GOFIN_CXX_COMPILER}"
  "-DCMAKE_C_FLAGS=${GOFIN_C_FLAGS}"
  "-DCMAKE_CXX_FLAGS=${GOFIN_CXX_FLAGS}"
  "-DCMAKE_EXE_LINKER_FLAGS=${GOFIN_EXE_LINKER_FLAGS}")
if(GOFIN_C_COMPILER)
  list(APPEND c_cmake_args "-DCMAKE_C_COMPILER=${GOFIN_C_COMPILER}")
endif()
run_step(configure-c "${CMAKE_COMMAND}" ${c_cmake_args})
run_step(build-c "${CMAKE_COMMAND}" --build "${work}/cmake-build-c" --config "${GOFIN_CONFIG}")
set(c_exe "${work}/cmake-build-c/gofin_c_consumer")
if(NOT EXISTS "${c_exe}")
  set(c_exe "${work}/cmake-build-c/${GOFIN_CONFIG}/gofin_c_consumer")
endif()
run_step(run-cmake-c-consumer "${c_exe}")

# 4. pkg-config consumers.
if(NOT GOFIN_PKG_CONFIG)
  message(FATAL_ERROR "consumer_package: pkg-config not found (install pkg-config)")
endif()
file(GLOB_RECURSE pc_files "${prefix}/gofin.pc")
if(NOT pc_files)
  message(FATAL_ERROR "consumer_package: gofin.pc was not installed under ${prefix}")
endif()
list(GET pc_files 0 pc_file)
get_filename_component(pc_dir "${pc_file}" DIRECTORY)
set(ENV{PKG_CONFIG_PATH} "${pc_dir}")
message(STATUS "consumer_package: PKG_CONFIG_PATH=${pc_dir}")
execute_process(COMMAND "${GOFIN_PKG_CONFIG}" --cflags --libs gofin
  RESULT_VARIABLE rc OUTPUT_VARIABLE pc_flags OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT rc STREQUAL "0")
  message(FATAL_ERROR "consumer_package: step 'pkg-config --cflags --libs gofin' FAILED (${rc})")
endif()
message(STATUS "consumer_package: pkg-config gives: ${pc_flags}")
separate_arguments(pc_flags UNIX_COMMAND "${pc_flags}")
separate_arguments(extra_cxx UNIX_COMMAND "${GOFIN_CXX_FLAGS} ${GOFIN_EXE_LINKER_FLAGS}")
run_step(pkg-config-build "${GOFIN_CXX_COMPILER}" -O1 ${extra_cxx}
  "${GOFIN_CONSUMER_SOURCE_DIR}/pkgconfig_main.cpp" -o "${work}/gofin_pkgconfig_consumer"
  ${pc_flags})
# A shared libgofin is found through LD_LIBRARY_PATH (pkg-config adds no rpath).
get_filename_component(ld_path "${pc_dir}" DIRECTORY)
if(DEFINED ENV{LD_LIBRARY_PATH} AND NOT "$ENV{LD_LIBRARY_PATH}" STREQUAL "")
  string(APPEND ld_path ":$ENV{LD_LIBRARY_PATH}")
endif()
set(ENV{LD_LIBRARY_PATH} "${ld_path}")
run_step(run-pkg-config-consumer "${work}/gofin_pkgconfig_consumer")

# The C API with the C compiler: gofin-c.pc's flags alone, plus the C++ runtime in its Libs.
if(GOFIN_C_COMPILER)
  execute_process(COMMAND "${GOFIN_PKG_CONFIG}" --cflags --libs gofin-c
    RESULT_VARIABLE rc OUTPUT_VARIABLE pc_c_flags OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT rc STREQUAL "0")
    message(FATAL_ERROR "consumer_package: step 'pkg-config --cflags --libs gofin-c' FAILED (${rc})")
  endif()
  message(STATUS "consumer_package: pkg-config gofin-c gives: ${pc_c_flags}")
  separate_arguments(pc_c_flags UNIX_COMMAND "${pc_c_flags}")
  separate_arguments(extra_c UNIX_COMMAND "${GOFIN_C_FLAGS} ${GOFIN_EXE_LINKER_FLAGS}")
  run_step(pkg-config-c-build "${GOFIN_C_COMPILER}" -std=c11 -O1 ${extra_c}
    "${c_source}" -o "${work}/gofin_pkgconfig_c_consumer" ${pc_c_flags})
  run_step(run-pkg-config-c-consumer "${work}/gofin_pkgconfig_c_consumer")
endif()

message(STATUS "consumer_package: all steps passed")
