#include "scheduler/inputs.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "glog/logging.h"
#include "proto/base/files.h"
#include "proto/base/picture_size.h"
#include "proto/base/status_macros.h"
#include "proto/security/paths.h"
#include "worker/io/image_decode.h"

namespace zfarm::scheduler {
namespace {

namespace v1 = ::zfarm::v1;

absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

bool IsSha256Name(absl::string_view name) {
  if (name.size() != 64) return false;
  for (char c : name) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// Reads the regular file `path` (no symlink followed), refusing more than
// `max_bytes`. `what` names it in errors; the size error is INVALID_ARGUMENT
// naming --max-input-bytes.
absl::StatusOr<std::string> ReadBounded(const std::string& path, int64_t max_bytes,
                                        const std::string& what) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    if (e == ENOENT) return absl::NotFoundError(absl::StrCat(what, " does not exist"));
    return absl::PermissionDeniedError(absl::StrCat(what, ": cannot open: ", std::strerror(e)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(what, " is not a regular file"));
  }
  if (st.st_size > max_bytes) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", FormatMiB(st.st_size),
                                                   " is over --max-input-bytes (",
                                                   FormatMiB(max_bytes), ")"));
  }
  std::string out;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      ::close(fd);
      return absl::InternalError(absl::StrCat(what, ": read failed: ", std::strerror(e)));
    }
    if (n == 0) break;
    out.append(buf, n);
    if (static_cast<int64_t>(out.size()) > max_bytes) {  // grew while reading
      ::close(fd);
      return absl::InvalidArgumentError(absl::StrCat(what, ": more than --max-input-bytes (",
                                                     FormatMiB(max_bytes), ")"));
    }
  }
  ::close(fd);
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<InputStore>> InputStore::Open(Options options) {
  if (options.dir.empty()) return absl::InvalidArgumentError("input store: no folder");
  std::error_code ec;
  std::filesystem::create_directories(options.dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("input store ", options.dir, ": cannot create: ", ec.message()));
  }
  if (!options.input_root.empty()) {
    if (!std::filesystem::is_directory(options.input_root, ec)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--input-root: ", options.input_root, " is not a folder"));
    }
  }
  return std::unique_ptr<InputStore>(new InputStore(std::move(options)));
}

absl::StatusOr<std::string> InputStore::ReadUnderRoot(const std::string& field,
                                                      const std::string& relative) const {
  const std::string f = field + ".path";
  if (options_.input_root.empty()) {
    return Invalid(f, "this scheduler has no --input-root; send the picture's bytes in data");
  }
  absl::StatusOr<std::string> real = security::ResolveBeneath(options_.input_root, relative);
  if (!real.ok()) {
    const std::string q = absl::StrCat("'", absl::CHexEscape(relative), "'");
    switch (real.status().code()) {
      case absl::StatusCode::kNotFound:
        return Invalid(f, absl::StrCat(q, " does not exist under --input-root"));
      case absl::StatusCode::kPermissionDenied:
        return Invalid(f, absl::StrCat(q, " resolves outside --input-root (symlink?)"));
      default:
        return Invalid(f, absl::StrCat(q, " must be relative to --input-root, without '..' "
                                          "(or empty or '.' components)"));
    }
  }
  absl::StatusOr<std::string> bytes =
      ReadBounded(*real, options_.limits.max_input_bytes, absl::StrCat("'", relative, "'"));
  if (!bytes.ok()) return Invalid(f, std::string(bytes.status().message()));
  return bytes;
}

absl::Status InputStore::Store(const std::string& sha256, const std::string& bytes) const {
  const std::string path = options_.dir + "/" + sha256;
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
      st.st_size == static_cast<off_t>(bytes.size())) {
    // Already stored: mark it as used now, so a sweep does not take it from
    // under this submit before the job is journaled.
    if (::utimensat(AT_FDCWD, path.c_str(), nullptr, AT_SYMLINK_NOFOLLOW) == 0) {
      return absl::OkStatus();
    }
  }
  absl::Status s = base::WriteFileAtomically(path, bytes);
  if (!s.ok()) {
    return absl::InternalError(absl::StrCat("input store: ", s.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<InputStore::Loaded> InputStore::Load(const std::string& field,
                                                    v1::ImageInput* in) const {
  Loaded out;
  std::string f = field + ".data";
  switch (in->source_case()) {
    case v1::ImageInput::kSha256:
      return Invalid(field + ".sha256", "is set by the scheduler; send data or path");
    case v1::ImageInput::kPath: {
      f = field + ".path";
      ZFARM_ASSIGN_OR_RETURN(out.bytes, ReadUnderRoot(field, in->path()));
      break;
    }
    case v1::ImageInput::kData:
      out.bytes = std::move(*in->mutable_data());
      break;
    case v1::ImageInput::SOURCE_NOT_SET:
      return Invalid(field, "set data (PNG or JPEG bytes) or path (under --input-root)");
  }
  const Limits& l = options_.limits;
  if (out.bytes.empty()) return Invalid(f, "must not be empty");
  if (static_cast<int64_t>(out.bytes.size()) > l.max_input_bytes) {
    return Invalid(f, absl::StrCat(FormatMiB(out.bytes.size()), " is over --max-input-bytes (",
                                   FormatMiB(l.max_input_bytes), ")"));
  }
  // The header only (format and size); the worker decodes the pixels.
  ZFARM_ASSIGN_OR_RETURN(
      worker::PictureInfo info,
      worker::ProbeImage(out.bytes, f, {.max_side = l.max_size_px, .max_pixels = 0}));
  out.width = info.width;
  out.height = info.height;
  out.sha256 = base::Sha256Hex(out.bytes);
  return out;
}

absl::Status InputStore::Intern(const std::string& field, v1::JobSpec* spec) const {
  // Everything is checked before anything is stored.
  std::vector<std::pair<v1::ImageInput*, Loaded>> loaded;
  if (spec->has_init_image()) {
    ZFARM_ASSIGN_OR_RETURN(Loaded img, Load(field + ".init_image", spec->mutable_init_image()));
    const Limits& l = options_.limits;
    // The size is the picture's, rounded down to multiples of 16 (picture_size.h: what the
    // worker's resize gives, as in diffusers' image-to-image pipelines, which refuse any other).
    auto derive = [&](int side, const char* name, int32_t current) -> absl::StatusOr<int32_t> {
      const int32_t v = base::RoundDownPictureSide(side);
      if (current != 0 && current != v) {
        return Invalid(absl::StrCat(field, ".", name),
                       absl::StrCat(current, " differs from the init image's ", name, " ", v,
                                    " (its ", img.width, "x", img.height,
                                    " rounded down to multiples of 16); leave width_px and "
                                    "height_px 0 to take the picture's size, or resize it"));
      }
      if (v < l.min_size_px) {
        return Invalid(field + ".init_image",
                       absl::StrCat("a ", img.width, "x", img.height, " image gives ", name, " ",
                                    v, " (its side rounded down to a multiple of 16), below ",
                                    l.min_size_px, "; send a picture of at least ",
                                    l.min_size_px, " pixels a side"));
      }
      return v;
    };
    ZFARM_ASSIGN_OR_RETURN(int32_t w, derive(img.width, "width_px", spec->width_px()));
    ZFARM_ASSIGN_OR_RETURN(int32_t h, derive(img.height, "height_px", spec->height_px()));
    spec->set_width_px(w);
    spec->set_height_px(h);
    loaded.emplace_back(spec->mutable_init_image(), std::move(img));
  }
  if (spec->has_mask_image()) {
    // A mask of another size than the image is resized by the worker (as diffusers does).
    ZFARM_ASSIGN_OR_RETURN(Loaded mask, Load(field + ".mask_image", spec->mutable_mask_image()));
    loaded.emplace_back(spec->mutable_mask_image(), std::move(mask));
  }
  if (spec->has_control() && spec->control().has_image()) {
    // Resized by the worker to the job's size (as diffusers does).
    v1::ImageInput* in = spec->mutable_control()->mutable_image();
    ZFARM_ASSIGN_OR_RETURN(Loaded control, Load(field + ".control.image", in));
    loaded.emplace_back(in, std::move(control));
  }
  for (auto& [in, l] : loaded) {
    ZFARM_RETURN_IF_ERROR(Store(l.sha256, l.bytes));
    in->set_sha256(l.sha256);
  }
  return absl::OkStatus();
}

absl::Status InputStore::Fill(v1::JobSpec* spec) const {
  for (v1::ImageInput* in :
       {spec->has_init_image() ? spec->mutable_init_image() : nullptr,
        spec->has_mask_image() ? spec->mutable_mask_image() : nullptr,
        spec->has_control() ? spec->mutable_control()->mutable_image() : nullptr}) {
    if (in == nullptr || in->source_case() != v1::ImageInput::kSha256) continue;
    const std::string sha = in->sha256();
    if (!IsSha256Name(sha)) {
      return absl::InvalidArgumentError(absl::StrCat("input reference '", sha, "' is not a sha256"));
    }
    const std::string path = options_.dir + "/" + sha;
    ZFARM_ASSIGN_OR_RETURN(std::string bytes,
                           ReadBounded(path, int64_t{1} << 40, "stored input " + path));
    if (base::Sha256Hex(bytes) != sha) {
      return absl::DataLossError(
          absl::StrCat("stored input ", path, " no longer has its sha256 (damaged)"));
    }
    in->set_data(std::move(bytes));
  }
  return absl::OkStatus();
}

void InputStore::AddReferences(const v1::JobSpec& spec, absl::flat_hash_set<std::string>* out) {
  if (spec.init_image().source_case() == v1::ImageInput::kSha256) {
    out->insert(spec.init_image().sha256());
  }
  if (spec.mask_image().source_case() == v1::ImageInput::kSha256) {
    out->insert(spec.mask_image().sha256());
  }
  if (spec.control().image().source_case() == v1::ImageInput::kSha256) {
    out->insert(spec.control().image().sha256());
  }
}

absl::StatusOr<int> InputStore::Sweep(const absl::flat_hash_set<std::string>& referenced,
                                      absl::Duration min_age) const {
  DIR* d = ::opendir(options_.dir.c_str());
  if (d == nullptr) {
    return absl::InternalError(
        absl::StrCat("input store ", options_.dir, ": cannot list: ", std::strerror(errno)));
  }
  const absl::Time cutoff = absl::Now() - min_age;
  int removed = 0;
  while (struct dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    const bool blob = IsSha256Name(name);
    const bool temp = !blob && name.size() > 64 && IsSha256Name(name.substr(0, 64)) &&
                      name.compare(64, 5, ".tmp.") == 0;
    if (!(blob || temp) || (blob && referenced.contains(name))) continue;
    const std::string path = options_.dir + "/" + name;
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0) continue;
    if (absl::TimeFromTimespec(st.st_mtim) > cutoff) continue;
    if (::unlink(path.c_str()) == 0) {
      ++removed;
      LOG(INFO) << "event=input_removed sha256=" << name.substr(0, 64)
                << (temp ? " temp=true" : "");
    }
  }
  ::closedir(d);
  return removed;
}

}  // namespace zfarm::scheduler
