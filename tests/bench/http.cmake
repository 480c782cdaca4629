# slow_client_bench: the REST gateway with 200 slow-drip and 200 idle connections
# open; normal-request latency and when the server closes the slow ones. Run by
# hand; results in RESULTS.md "## REST gateway: slow clients".
if(TARGET zfarm_scheduler_testing)
  add_executable(slow_client_bench ${CMAKE_CURRENT_SOURCE_DIR}/slow_client_bench.cc)
  target_link_libraries(slow_client_bench PRIVATE zfarm_scheduler_http zfarm_scheduler_testing
    absl::flags absl::flags_parse absl::synchronization glog::glog)
  zfarm_warnings(slow_client_bench)
endif()
