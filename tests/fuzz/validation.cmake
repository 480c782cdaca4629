# Request-validation fuzzing: SubmitJobRequest from fuzz bytes ->
# scheduler/validation.h, with the documented limits as properties.
#  - normal build: validation_fuzz_replay replays the committed seed corpus (ctest).
#  - -DZFARM_BUILD_FUZZERS=ON with clang: validation_fuzzer (libFuzzer + ASan + UBSan,
#    validation.cc compiled instrumented) and a 20 s ctest smoke run. Long campaign:
#      nice -n 19 BUILD/tests/fuzz/validation_fuzzer -max_total_time=600 \
#        /tmp/val-corpus tests/fuzz/corpus/validation
set(_val_seed ${CMAKE_CURRENT_SOURCE_DIR}/corpus/validation)

add_executable(validation_fuzz_replay ${CMAKE_CURRENT_SOURCE_DIR}/validation_fuzzer.cc)
target_link_libraries(validation_fuzz_replay PRIVATE zfarm_scheduler_core)
zfarm_warnings(validation_fuzz_replay)
add_test(NAME validation_fuzz_replay COMMAND validation_fuzz_replay ${_val_seed})
set_tests_properties(validation_fuzz_replay PROPERTIES LABELS "scheduler;fuzz" TIMEOUT 60)

if(ZFARM_BUILD_FUZZERS)
  set(_san -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
  add_executable(validation_fuzzer ${CMAKE_CURRENT_SOURCE_DIR}/validation_fuzzer.cc
                                   ${PROJECT_SOURCE_DIR}/scheduler/validation.cc)
  target_include_directories(validation_fuzzer PRIVATE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_link_libraries(validation_fuzzer PRIVATE zfarm_scheduler_core)  # for its deps
  target_compile_definitions(validation_fuzzer PRIVATE ZFARM_LIBFUZZER)
  target_compile_options(validation_fuzzer PRIVATE ${_san} -g -O1)
  target_link_options(validation_fuzzer PRIVATE ${_san})
  zfarm_warnings(validation_fuzzer)
  add_test(NAME validation_fuzz_smoke
    COMMAND $<TARGET_FILE:validation_fuzzer> -max_total_time=20 -timeout=10 -rss_limit_mb=2048
            ${CMAKE_CURRENT_BINARY_DIR}/validation_fuzz_corpus ${_val_seed})
  set_tests_properties(validation_fuzz_smoke PROPERTIES LABELS "scheduler;fuzz" TIMEOUT 120)
  file(MAKE_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/validation_fuzz_corpus)
endif()
