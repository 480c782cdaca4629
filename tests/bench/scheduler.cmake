# scheduler_bench: submit throughput, slot->assignment latency, 1,000 workers,
# 100,000 queued jobs (RSS), on the SQLite and the PostgreSQL journal. Run by hand;
# results in RESULTS.md "## Scheduler".
if(TARGET zfarm_scheduler_testing)
  add_executable(scheduler_bench ${CMAKE_CURRENT_SOURCE_DIR}/scheduler_bench.cc)
  target_link_libraries(scheduler_bench PRIVATE zfarm_scheduler_server zfarm_scheduler_testing
    absl::flags absl::flags_parse glog::glog)
  zfarm_warnings(scheduler_bench)
  if(TARGET zfarm_scheduler_ha)
    target_link_libraries(scheduler_bench PRIVATE zfarm_scheduler_ha)
    target_compile_definitions(scheduler_bench PRIVATE ZFARM_HAVE_LIBPQ=1)
  endif()
endif()
