# Safetensors parser fuzzing (bad input must give an error, never a crash).
#  - normal build: safetensors_fuzz_replay replays the committed seed corpus (ctest).
#  - -DZFARM_BUILD_FUZZERS=ON with clang: safetensors_fuzzer (libFuzzer + ASan + UBSan, the
#    parser compiled instrumented) and a ~20 s ctest smoke run. Long campaign by hand:
#      nice -n 19 BUILD/tests/fuzz/safetensors_fuzzer -max_total_time=600 -max_len=4096 \
#        /tmp/st-corpus tests/fuzz/corpus/safetensors
set(_st_seed ${CMAKE_CURRENT_SOURCE_DIR}/corpus/safetensors)
set(_st_srcs ${PROJECT_SOURCE_DIR}/worker/io/safetensors.cc ${PROJECT_SOURCE_DIR}/worker/io/file_util.cc)
set(_st_deps zfarm_base absl::status absl::statusor absl::strings absl::str_format
             nlohmann_json::nlohmann_json)

add_executable(safetensors_fuzz_replay ${CMAKE_CURRENT_SOURCE_DIR}/safetensors_fuzzer.cc)
target_link_libraries(safetensors_fuzz_replay PRIVATE zfarm_worker_io)
zfarm_warnings(safetensors_fuzz_replay)
add_test(NAME safetensors_fuzz_replay COMMAND safetensors_fuzz_replay ${_st_seed})
set_tests_properties(safetensors_fuzz_replay PROPERTIES LABELS "io;fuzz" TIMEOUT 60)

if(ZFARM_BUILD_FUZZERS)
  set(_san -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
  add_executable(safetensors_fuzzer ${CMAKE_CURRENT_SOURCE_DIR}/safetensors_fuzzer.cc ${_st_srcs})
  target_include_directories(safetensors_fuzzer PRIVATE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_link_libraries(safetensors_fuzzer PRIVATE ${_st_deps})
  target_compile_definitions(safetensors_fuzzer PRIVATE ZFARM_LIBFUZZER)
  target_compile_options(safetensors_fuzzer PRIVATE ${_san} -g -O1)
  target_link_options(safetensors_fuzzer PRIVATE ${_san})
  zfarm_warnings(safetensors_fuzzer)
  add_test(NAME safetensors_fuzz_smoke
    COMMAND $<TARGET_FILE:safetensors_fuzzer> -max_total_time=20 -timeout=10 -max_len=4096
            -rss_limit_mb=2048 ${CMAKE_CURRENT_BINARY_DIR}/safetensors_fuzz_corpus ${_st_seed})
  set_tests_properties(safetensors_fuzz_smoke PROPERTIES LABELS "io;fuzz" TIMEOUT 120)
  file(MAKE_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/safetensors_fuzz_corpus)
endif()
