# pipeline_bench (not a ctest test): BUILD/tests/bench/pipeline_bench [--out FILE.md]
# The GPU speed harness; tests/gpu/run.sh runs it on the GPU host. Builds against
# Debian's CPU libtorch 1.13 too (runs its sections on the CPU at reduced sizes there).
if(NOT ZFARM_BUILD_WORKER OR NOT TORCH_FOUND)
  return()
endif()
option(ZFARM_BENCH_WITH_IO "pipeline_bench: measure safetensors loading (needs zfarm_worker_io)" ON)
add_executable(pipeline_bench
  ${CMAKE_CURRENT_SOURCE_DIR}/pipeline_bench.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/pipeline_bench_pipeline.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/pipeline_bench_profile.cc)
target_include_directories(pipeline_bench PRIVATE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
target_link_libraries(pipeline_bench PRIVATE ${TORCH_LIBRARIES})
if(ZFARM_BENCH_WITH_IO AND TARGET zfarm_worker_io)
  target_link_libraries(pipeline_bench PRIVATE zfarm_worker_io)
  target_compile_definitions(pipeline_bench PRIVATE ZFARM_BENCH_WITH_IO=1)
endif()
option(ZFARM_BENCH_WITH_PIPELINE "pipeline_bench: time worker/pipeline (needs zfarm_worker_pipeline)" ON)
if(ZFARM_BENCH_WITH_PIPELINE AND TARGET zfarm_worker_pipeline AND TARGET zfarm_worker_image)
  target_link_libraries(pipeline_bench PRIVATE zfarm_worker_pipeline zfarm_worker_image)
  target_compile_definitions(pipeline_bench PRIVATE ZFARM_BENCH_WITH_PIPELINE=1)
endif()
zfarm_warnings(pipeline_bench)
