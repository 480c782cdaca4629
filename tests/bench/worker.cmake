# worker_gap_bench: on a busy CPU worker with the tiny model, the time from one job's
# image to the next job's render start / first step. Run by hand; results in
# RESULTS.md "## Worker".
if(TARGET zfarm_scheduler_testing AND TARGET zfarm_worker_device)
  add_executable(worker_gap_bench ${CMAKE_CURRENT_SOURCE_DIR}/worker_gap_bench.cc)
  target_link_libraries(worker_gap_bench PRIVATE zfarm_worker_runtime zfarm_worker_device
    zfarm_worker_pipeline zfarm_scheduler_server zfarm_scheduler_testing absl::flags
    absl::flags_parse glog::glog)
  target_compile_definitions(worker_gap_bench PRIVATE
    ZFARM_TINY_MODEL_DIR="${ZFARM_TINY_MODEL_DIR}")
  add_dependencies(worker_gap_bench tiny_model)
  zfarm_warnings(worker_gap_bench)
endif()
