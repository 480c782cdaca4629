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
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "worker/commands/commands.h"
#include "worker/text/tokenizer.h"

namespace zfarm::worker {
namespace {

constexpr char kUsage[] =
    "usage: zfarm-worker tokenize --tokenizer FILE [--chat-template] [--max-tokens N]\n"
    "\n"
    "Reads JSON Lines on stdin (each line one JSON string) and writes one JSON\n"
    "array of token ids per line on stdout.\n"
    "  --tokenizer FILE   tokenizer.json (e.g. MODEL/tokenizer/tokenizer.json)\n"
    "  --chat-template    wrap each prompt in the Z-Image chat template and cut it\n"
    "                     to --max-tokens ids, as the pipeline does; truncations\n"
    "                     are reported on stderr\n"
    "  --max-tokens N     with --chat-template: the limit (default 512)\n"
    "Exit: 0 ok, 1 bad input line (stderr names the line) or bad tokenizer, 2 usage.\n";

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
  int max_tokens = text::kMaxPromptTokens;
};

// -1 to go on, else the exit status (0 after --help, 2 after a usage error).
int ParseTokenizeFlags(int argc, char** argv, TokenizeFlags* f) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (arg == "--chat-template") {
      f->chat_template = true;
    } else if ((arg == "--tokenizer" || arg == "--max-tokens") && i + 1 < argc) {
      std::string_view value = argv[++i];
      if (arg == "--tokenizer") {
        f->tokenizer_path = std::string(value);
      } else {
        char* end = nullptr;
        const long v = std::strtol(argv[i], &end, 10);
        if (value.empty() || *end != '\0' || v < 1 || v > 1000000) {
          std::fprintf(stderr, "zfarm-worker tokenize: --max-tokens must be in [1, 1000000]\n");
          return 2;
        }
        f->max_tokens = static_cast<int>(v);
      }
    } else if (arg.rfind("--tokenizer=", 0) == 0) {
      f->tokenizer_path = std::string(arg.substr(12));
    } else {
      std::fprintf(stderr, "zfarm-worker tokenize: unknown or incomplete flag '%s'\n\n%s", argv[i],
                   kUsage);
      return 2;
    }
  }
  if (f->tokenizer_path.empty()) {
    std::fprintf(stderr, "zfarm-worker tokenize: --tokenizer FILE is required\n\n%s", kUsage);
    return 2;
  }
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
