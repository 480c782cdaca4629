// zfarm-worker tokenize: JSON Lines prompts on stdin -> JSON arrays of token ids on stdout.
//
//   zfarm-worker tokenize --tokenizer FILE [--chat-template] [--max-tokens N]
//
// Each input line must be one JSON string (e.g. "a cat on a mat"). For each line
// one line "[id,id,...]" is written to stdout, in order. With --chat-template the
// prompt is wrapped in Z-Image's chat template and cut to --max-tokens ids
// (default 512, as the pipeline); a truncation is reported on stderr as
//   line N: truncated: M tokens > 512, the last M-512 ids were dropped
// Exit codes: 0 all lines done; 1 a line was not a JSON string or not valid
// UTF-8 (stderr names the line, 1-based; lines before it were already written),
// or the tokenizer could not be loaded; 2 usage error.
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "proto/flags/flags.h"
#include "worker/commands/commands.h"
#include "worker/commands/flags.h"
#include "worker/text/tokenizer.h"

namespace zfarm::worker {
namespace {

constexpr char kCommand[] = "tokenize";

void WriteIds(const std::vector<int32_t>& ids, std::string* out) {
  out->clear();
  out->push_back('[');
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) out->push_back(',');
    out->append(std::to_string(ids[i]));
  }
  out->append("]\n");
}

}  // namespace

namespace {

struct TokenizeFlags {
  std::string tokenizer_path;
  bool chat_template = false;
  int32_t max_tokens = text::kMaxPromptTokens;
};

// The text around the flag list in --help.
void Describe(flags::FlagSet* fs) {
  fs->set_description(
      "Reads JSON Lines on stdin (each line one JSON string) and writes one "
      "JSON\narray of token ids per line on stdout.");
  fs->set_footer(
      "Exit: 0 ok, 1 bad input line (stderr names the line) or bad tokenizer, 2 "
      "usage.\n\n"
      "example:\n"
      "  echo '\"a red fox\"' | zfarm-worker tokenize --tokenizer "
      "MODEL/tokenizer/tokenizer.json --chat-template\n");
  fs->set_show_defaults(true);
}

// -1 to go on, else the exit status (0 after --help, 2 after a usage error).
int ParseTokenizeFlags(int argc, char** argv, TokenizeFlags* f) {
  flags::FlagSet fs("zfarm-worker tokenize --tokenizer FILE [--chat-template] [--max-tokens N]");
  Describe(&fs);
  fs.String("tokenizer", &f->tokenizer_path,
            "tokenizer.json (e.g. MODEL/tokenizer/tokenizer.json; required)", "FILE");
  fs.Bool("chat-template", &f->chat_template,
          "wrap each prompt in the Z-Image chat template and cut it to --max-tokens ids, as the "
          "pipeline does; truncations are reported on stderr");
  fs.Int("max-tokens", &f->max_tokens, "with --chat-template: the limit, 1..1000000");
  if (std::optional<int> rc = ParseCommandFlags(kCommand, fs, argc, argv)) return *rc;
  if (f->max_tokens < 1 || f->max_tokens > 1000000) {
    return UsageError(kCommand, fs, "--max-tokens must be in [1, 1000000]");
  }
  if (f->tokenizer_path.empty()) return UsageError(kCommand, fs, "--tokenizer FILE is required");
  return -1;
}

absl::Status OnLine(long line_no, const absl::Status& s) {
  return absl::Status(s.code(), absl::StrCat("line ", line_no, ": ", s.message()));
}

// The ids of one input line (a JSON string); the error names the line. A truncation
// under --chat-template is reported on stderr.
absl::StatusOr<std::vector<int32_t>> IdsForLine(const text::Tokenizer& tokenizer,
                                                const std::string& line, long line_no,
                                                const TokenizeFlags& f) {
  std::string prompt;
  try {
    nlohmann::json j = nlohmann::json::parse(line);
    if (!j.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_no, ": expected a JSON string, got ", j.type_name()));
    }
    prompt = j.get<std::string>();
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("line ", line_no, ": not valid JSON: ", e.what()));
  }
  if (!f.chat_template) {
    auto r = tokenizer.Encode(prompt);
    if (!r.ok()) return OnLine(line_no, r.status());
    return *std::move(r);
  }
  auto p = tokenizer.EncodePrompt(prompt, f.max_tokens);
  if (!p.ok()) return OnLine(line_no, p.status());
  if (p->truncated) {
    std::fprintf(stderr,
                 "zfarm-worker tokenize: line %ld: truncated: %d tokens > %d, the last %d "
                 "ids were dropped\n",
                 line_no, p->untruncated_size, f.max_tokens, p->untruncated_size - f.max_tokens);
  }
  return std::move(p->ids);
}

}  // namespace

int RunTokenize(int argc, char** argv) {
  TokenizeFlags f;
  if (int rc = ParseTokenizeFlags(argc, argv, &f); rc >= 0) return rc;
  auto tokenizer = text::Tokenizer::FromFile(f.tokenizer_path);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "zfarm-worker tokenize: %s\n",
                 std::string(tokenizer.status().message()).c_str());
    return 1;
  }
  std::string line;
  std::string out;
  long line_no = 0;
  while (std::getline(std::cin, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();  // CRLF files
    absl::StatusOr<std::vector<int32_t>> ids = IdsForLine(**tokenizer, line, line_no, f);
    if (!ids.ok()) {
      std::fprintf(stderr, "zfarm-worker tokenize: %s\n",
                   std::string(ids.status().message()).c_str());
      return 1;
    }
    WriteIds(*ids, &out);
    std::cout.write(out.data(), static_cast<std::streamsize>(out.size()));
  }
  std::cout.flush();
  if (!std::cout) {
    std::fprintf(stderr, "zfarm-worker tokenize: cannot write to stdout\n");
    return 1;
  }
  return 0;
}

}  // namespace zfarm::worker
