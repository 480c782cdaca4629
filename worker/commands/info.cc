// zfarm-worker info FILE [--json]
//
// Prints what a result file (PNG, JPEG or WebP) says about how it was made: its
// format and size, the AUTOMATIC1111 parameters text and zfarm's JSON, read from
// where the writer put them (PNG text chunks, EXIF UserComment, XMP). Exit 0 when
// the file decodes, 1 when it cannot be read or decoded, 2 on usage errors.

#include <cstdio>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "proto/flags/flags.h"
#include "worker/commands/commands.h"
#include "worker/commands/flags.h"
#include "worker/io/image_file.h"

namespace zfarm::worker {
namespace {

constexpr char kCommand[] = "info";

}  // namespace

int RunInfo(int argc, char** argv) {
  bool json = false;
  flags::FlagSet fs("zfarm-worker info FILE [--json]");
  fs.set_description(
      "Prints the format, size and generation parameters of a PNG, JPEG or WebP result.");
  fs.Bool("json", &json,
          "one JSON object: file, format, media_type, width, height, parameters, zfarm");
  std::vector<std::string> args;
  if (std::optional<int> rc = ParseCommandFlags(kCommand, fs, argc, argv, &args, 1)) return *rc;
  if (args.empty()) return UsageError(kCommand, fs, "FILE is required");
  const std::string& path = args[0];
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "zfarm-worker info: cannot read %s\n", path.c_str());
    return 1;
  }
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  absl::StatusOr<ImageInfo> info = ReadImageInfo(bytes);
  if (!info.ok()) {
    std::fprintf(stderr, "zfarm-worker info: %s: %s\n", path.c_str(),
                 std::string(info.status().message()).c_str());
    return 1;
  }
  const std::string format(ImageFormatName(info->format));
  const std::string media_type(ImageMediaType(info->format));
  if (json) {
    nlohmann::json j = {{"file", path},
                        {"format", format},
                        {"media_type", media_type},
                        {"width", info->width},
                        {"height", info->height},
                        {"parameters", info->parameters}};
    nlohmann::json params = nlohmann::json::parse(info->json, nullptr, /*allow_exceptions=*/false);
    j["zfarm"] = params.is_discarded() ? nlohmann::json(nullptr) : params;
    std::printf("%s\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }
  std::printf("file: %s\nformat: %s (%s), %dx%d, %zu bytes\n", path.c_str(), format.c_str(),
              media_type.c_str(), info->width, info->height, bytes.size());
  std::printf("parameters:\n%s\n", info->parameters.empty() ? "(none)" : info->parameters.c_str());
  std::printf("zfarm:\n%s\n", info->json.empty() ? "(none)" : info->json.c_str());
  return 0;
}

}  // namespace zfarm::worker
