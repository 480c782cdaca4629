# Tokenizer fuzzing (bad input must give an error, never a crash).
#  - normal build: tokenizer_fuzz_replay replays the committed seed corpus (ctest).
#  - -DZFARM_BUILD_FUZZERS=ON with clang: tokenizer_fuzzer (libFuzzer + ASan +
#    UBSan, the tokenizer sources compiled instrumented) and a short ctest smoke
#    run. Long campaign by hand, e.g.
#      nice -n 19 BUILD/tests/fuzz/tokenizer_fuzzer -max_total_time=600 \
#        /tmp/tok-corpus tests/fuzz/corpus/tokenizer
set(_tok_seed ${CMAKE_CURRENT_SOURCE_DIR}/corpus/tokenizer)
set(_tok_srcs ${PROJECT_SOURCE_DIR}/worker/text/tokenizer.cc ${PROJECT_SOURCE_DIR}/worker/text/utf8.cc)
set(_tok_deps zfarm_base absl::status absl::statusor absl::span absl::strings absl::str_format
              absl::flat_hash_map absl::hash absl::synchronization nlohmann_json::nlohmann_json
              ICU::uc ICU::data)
set(_tok_defs ZFARM_SOURCE_DIR="${PROJECT_SOURCE_DIR}" ZFARM_BINARY_DIR="${PROJECT_BINARY_DIR}")

add_executable(tokenizer_fuzz_replay ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer_fuzzer.cc)
target_link_libraries(tokenizer_fuzz_replay PRIVATE zfarm_worker_text ICU::uc ICU::data)
target_compile_definitions(tokenizer_fuzz_replay PRIVATE ${_tok_defs})
zfarm_warnings(tokenizer_fuzz_replay)
add_test(NAME tokenizer_fuzz_replay COMMAND tokenizer_fuzz_replay ${_tok_seed})
set_tests_properties(tokenizer_fuzz_replay PROPERTIES LABELS "tokenizer;fuzz" TIMEOUT 120)

if(ZFARM_BUILD_FUZZERS)
  set(_san -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
  add_executable(tokenizer_fuzzer ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer_fuzzer.cc ${_tok_srcs})
  target_include_directories(tokenizer_fuzzer PRIVATE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_link_libraries(tokenizer_fuzzer PRIVATE ${_tok_deps})
  target_compile_definitions(tokenizer_fuzzer PRIVATE ${_tok_defs} ZFARM_LIBFUZZER)
  target_compile_options(tokenizer_fuzzer PRIVATE ${_san} -g -O1)
  target_link_options(tokenizer_fuzzer PRIVATE ${_san})
  zfarm_warnings(tokenizer_fuzzer)
  # Smoke: 20 s of fuzzing from the seeds; new inputs go to the build tree.
  add_test(NAME tokenizer_fuzz_smoke
    COMMAND ${CMAKE_COMMAND} -E env ASAN_OPTIONS=detect_leaks=0
            $<TARGET_FILE:tokenizer_fuzzer> -max_total_time=20 -timeout=10 -rss_limit_mb=2048
            ${CMAKE_CURRENT_BINARY_DIR}/tokenizer_fuzz_corpus ${_tok_seed})
  set_tests_properties(tokenizer_fuzz_smoke PROPERTIES LABELS "tokenizer;fuzz" TIMEOUT 120)
  file(MAKE_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/tokenizer_fuzz_corpus)
endif()
