# make_tiny_model: deterministic Z-Image folders in the real layout (issue 3 item 4).
zfarm_cc_binary(make_tiny_model
  SRCS ${CMAKE_CURRENT_SOURCE_DIR}/make_tiny_model.cc
  DEPS zfarm_worker_io absl::strings absl::str_format nlohmann_json::nlohmann_json)
