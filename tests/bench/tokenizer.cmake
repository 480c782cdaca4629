# Tokenizer benchmark (not a ctest test): BUILD/tests/bench/tokenizer_bench
add_executable(tokenizer_bench ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer_bench.cc)
target_link_libraries(tokenizer_bench PRIVATE zfarm_worker_text benchmark::benchmark glog::glog
                                              nlohmann_json::nlohmann_json)
target_compile_definitions(tokenizer_bench PRIVATE
  ZFARM_SOURCE_DIR="${PROJECT_SOURCE_DIR}" ZFARM_BINARY_DIR="${PROJECT_BINARY_DIR}")
zfarm_warnings(tokenizer_bench)
