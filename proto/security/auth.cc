#include "proto/security/auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "glog/logging.h"

namespace zfarm::security {
namespace {

void Digest(absl::string_view token, unsigned char out[32]) {
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), out);
}

absl::StatusOr<std::string> ReadText(const std::string& flag, const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  if (!f) return absl::NotFoundError(absl::StrCat(flag, ": cannot read ", path));
  return ss.str();
}

}  // namespace

const char* RoleName(Role role) {
  switch (role) {
    case Role::kSubmitter:
      return "submitter";
    case Role::kAdmin:
      return "admin";
    case Role::kWorker:
      return "worker";
  }
  return "?";
}

absl::StatusOr<Role> ParseRole(absl::string_view name) {
  if (name == "submitter") return Role::kSubmitter;
  if (name == "admin") return Role::kAdmin;
  if (name == "worker") return Role::kWorker;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown role '", name, "' (submitter, admin, worker)"));
}

absl::StatusOr<std::vector<TokenStore::Entry>> TokenStore::Parse(const std::string& path,
                                                                 const std::string& text) {
  std::vector<Entry> out;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line.substr(0, line.find('#')));
    if (line.empty()) continue;
    std::vector<absl::string_view> f =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    // Messages name the file and line, never the token itself.
    auto bad = [&](const std::string& what) {
      return absl::InvalidArgumentError(
          absl::StrCat("--token-file: ", path, " line ", line_no, ": ", what));
    };
    if (f.size() != 3) return bad("expected \"<token> <principal> <role>\"");
    if (f[0].size() < 16 || f[0].size() > 512) return bad("token must be 16..512 bytes");
    for (unsigned char c : f[0]) {
      if (c < 0x21 || c > 0x7e) return bad("token must be printable ASCII");
    }
    if (f[1].size() > 128) return bad("principal exceeds 128 bytes");
    absl::StatusOr<Role> role = ParseRole(f[2]);
    if (!role.ok()) return bad(std::string(role.status().message()));
    Entry e;
    Digest(f[0], e.digest);
    e.principal.name = std::string(f[1]);
    e.principal.role = *role;
    for (const Entry& o : out) {
      if (CRYPTO_memcmp(o.digest, e.digest, 32) == 0) return bad("duplicate token");
    }
    out.push_back(std::move(e));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<TokenStore>> TokenStore::Open(const std::string& path) {
  std::unique_ptr<TokenStore> s(new TokenStore(path));
  absl::MutexLock lock(&s->mu_);
  if (absl::Status st = s->ReloadIfChanged(); !st.ok()) return st;
  if (s->entries_.empty()) {
    LOG(WARNING) << "event=token_file_empty path=" << path << " (every call is UNAUTHENTICATED)";
  }
  return s;
}

absl::Status TokenStore::ReloadIfChanged() {
  struct stat st;
  if (::stat(path_.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("--token-file: cannot stat ", path_));
  }
  FileId id{static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
            static_cast<int64_t>(st.st_size), static_cast<uint64_t>(st.st_ino)};
  if (id == loaded_) return absl::OkStatus();
  absl::StatusOr<std::string> text = ReadText("--token-file", path_);
  if (!text.ok()) return text.status();
  absl::StatusOr<std::vector<Entry>> parsed = Parse(path_, *text);
  if (!parsed.ok()) return parsed.status();
  entries_ = *std::move(parsed);
  loaded_ = id;
  ++reloads_;
  LOG(INFO) << "event=token_file_loaded path=" << path_ << " tokens=" << entries_.size();
  return absl::OkStatus();
}

absl::StatusOr<Principal> TokenStore::Authenticate(absl::string_view token) {
  if (token.empty()) {
    return absl::UnauthenticatedError(
        "missing bearer token (send \"authorization: Bearer <token>\"; zfarm --token-file or "
        "$ZFARM_TOKEN)");
  }
  unsigned char d[32];
  Digest(token, d);
  absl::MutexLock lock(&mu_);
  if (absl::Status s = ReloadIfChanged(); !s.ok()) {
    // Keep serving with the previous table; the error names file and line only.
    LOG_EVERY_N(ERROR, 100) << "event=token_file_reload_failed error=\"" << s.message() << "\"";
  }
  const Entry* found = nullptr;
  for (const Entry& e : entries_) {  // no early exit: constant time per table
    if (CRYPTO_memcmp(e.digest, d, sizeof(d)) == 0) found = &e;
  }
  if (found == nullptr) return absl::UnauthenticatedError("invalid bearer token");
  return found->principal;
}

size_t TokenStore::size() {
  absl::MutexLock lock(&mu_);
  return entries_.size();
}

int64_t TokenStore::reloads() {
  absl::MutexLock lock(&mu_);
  return reloads_;
}

std::string BearerFromHeader(absl::string_view v) {
  v = absl::StripAsciiWhitespace(v);
  if (v.size() < 7 || !absl::EqualsIgnoreCase(v.substr(0, 7), "bearer ")) return "";
  return std::string(absl::StripAsciiWhitespace(v.substr(7)));
}

std::string BearerFromMetadata(const std::multimap<grpc::string_ref, grpc::string_ref>& md) {
  auto it = md.find("authorization");
  if (it == md.end()) return "";
  return BearerFromHeader(absl::string_view(it->second.data(), it->second.size()));
}

absl::StatusOr<std::string> LoadClientToken(const std::string& token_file) {
  if (token_file.empty()) {
    const char* env = std::getenv("ZFARM_TOKEN");
    return std::string(env ? absl::StripAsciiWhitespace(env) : "");
  }
  absl::StatusOr<std::string> text = ReadText("--token-file", token_file);
  if (!text.ok()) return absl::InvalidArgumentError(text.status().message());
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    // A server-style line ("token principal role") also works: the first field.
    return std::string(line.substr(0, line.find_first_of(" \t")));
  }
  return absl::InvalidArgumentError(absl::StrCat("--token-file: ", token_file, " has no token"));
}

void AddBearerToken(grpc::ClientContext* ctx, const std::string& token) {
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
}

}  // namespace zfarm::security
