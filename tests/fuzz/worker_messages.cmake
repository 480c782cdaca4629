# Fuzzing the scheduler's handling of worker messages: a Scheduler
# on a temp state dir, sequences of WorkerMessage on 1-3 sessions from fuzz bytes,
# invariants checked after every action (see worker_message_fuzzer.cc).
#  - normal build: worker_message_fuzz_replay replays the committed seed corpus (ctest).
#  - -DZFARM_BUILD_FUZZERS=ON with clang: worker_message_fuzzer (libFuzzer + ASan +
#    UBSan, the scheduler core compiled instrumented) and a 20 s ctest smoke run.
#    Long campaign (the journal fsyncs: keep the state dir on tmpfs):
#      TMPDIR=/dev/shm nice -n 19 BUILD/tests/fuzz/worker_message_fuzzer \
#        -max_total_time=600 /tmp/wm-corpus tests/fuzz/corpus/worker_messages
set(_wm_seed ${CMAKE_CURRENT_SOURCE_DIR}/corpus/worker_messages)
# FuzzedDataProvider.h ships with clang; copy just that header for the gcc replay build.
file(GLOB _wm_fdp /usr/lib/llvm-*/lib/clang/*/include/fuzzer/FuzzedDataProvider.h)
if(NOT _wm_fdp)
  message(WARNING "FuzzedDataProvider.h (clang) not found: worker_message fuzz targets skipped")
  return()
endif()
list(GET _wm_fdp 0 _wm_fdp)
configure_file(${_wm_fdp} ${CMAKE_CURRENT_BINARY_DIR}/fdp/fuzzer/FuzzedDataProvider.h COPYONLY)

add_executable(worker_message_fuzz_replay ${CMAKE_CURRENT_SOURCE_DIR}/worker_message_fuzzer.cc)
target_include_directories(worker_message_fuzz_replay SYSTEM PRIVATE
                           ${CMAKE_CURRENT_BINARY_DIR}/fdp)
target_link_libraries(worker_message_fuzz_replay PRIVATE zfarm_scheduler_core glog::glog)
zfarm_warnings(worker_message_fuzz_replay)
add_test(NAME worker_message_fuzz_replay COMMAND worker_message_fuzz_replay ${_wm_seed})
set_tests_properties(worker_message_fuzz_replay PROPERTIES LABELS "scheduler;fuzz" TIMEOUT 120)

if(ZFARM_BUILD_FUZZERS)
  set(_san -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
  set(_wm_srcs validation.cc job_queue.cc job_store.cc journal.cc scheduler.cc worker_registry.cc)
  list(TRANSFORM _wm_srcs PREPEND ${PROJECT_SOURCE_DIR}/scheduler/)
  add_executable(worker_message_fuzzer ${CMAKE_CURRENT_SOURCE_DIR}/worker_message_fuzzer.cc
                                       ${_wm_srcs})
  target_include_directories(worker_message_fuzzer PRIVATE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  # The instrumented objects above define every scheduler-core symbol, so nothing is
  # taken from the (uninstrumented) archive; it only brings its dependencies along.
  target_link_libraries(worker_message_fuzzer PRIVATE zfarm_scheduler_core glog::glog)
  target_compile_definitions(worker_message_fuzzer PRIVATE ZFARM_LIBFUZZER)
  target_compile_options(worker_message_fuzzer PRIVATE ${_san} -g -O1)
  target_link_options(worker_message_fuzzer PRIVATE ${_san})
  zfarm_warnings(worker_message_fuzzer)
  add_test(NAME worker_message_fuzz_smoke
    COMMAND ${CMAKE_COMMAND} -E env TMPDIR=/dev/shm ASAN_OPTIONS=detect_leaks=0
            $<TARGET_FILE:worker_message_fuzzer> -max_total_time=20 -timeout=20
            -rss_limit_mb=2048 ${CMAKE_CURRENT_BINARY_DIR}/worker_message_fuzz_corpus ${_wm_seed})
  set_tests_properties(worker_message_fuzz_smoke PROPERTIES LABELS "scheduler;fuzz" TIMEOUT 120)
  file(MAKE_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/worker_message_fuzz_corpus)
endif()
