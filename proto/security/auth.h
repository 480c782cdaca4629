#ifndef ZFARM_PROTO_SECURITY_AUTH_H_
#define ZFARM_PROTO_SECURITY_AUTH_H_

// File: auth.h
// Bearer tokens for zfarm's gRPC and HTTP ports.
//
// Server side: a token file (--token-file) with one line per token,
//     <token> <principal> <role>        # role: submitter | admin | worker
// ('#' starts a comment, blank lines are ignored; tokens are 16..512 printable
// ASCII bytes, unique). TokenStore reloads the file when its mtime, size or
// inode changes (checked on every Authenticate, i.e. without a restart); a file
// that no longer parses keeps the previous table (logged, without tokens).
// Tokens are compared in constant time (CRYPTO_memcmp over SHA-256 digests,
// every entry visited) and never logged.
//
//   ZFARM_ASSIGN_OR_RETURN(auto store, TokenStore::Open("/etc/zfarm/tokens"));
//   absl::StatusOr<Principal> who = store->Authenticate(BearerFromMetadata(md));
//
// Client side: the token is the first non-comment line of --token-file, or
// $ZFARM_TOKEN; each call carries "authorization: Bearer <token>":
//
//   ZFARM_ASSIGN_OR_RETURN(std::string token, LoadClientToken(flag_token_file));
//   AddBearerToken(&client_context, token);   // no-op for an empty token
//
// Thread-safe.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/string_ref.h"

namespace zfarm::security {

enum class Role { kSubmitter, kAdmin, kWorker };

// "submitter", "admin", "worker".
const char* RoleName(Role role);
absl::StatusOr<Role> ParseRole(absl::string_view name);

struct Principal {
  std::string name;
  Role role = Role::kSubmitter;
};

class TokenStore {
 public:
  // Loads `path`; INVALID_ARGUMENT naming the file and line on a bad line,
  // NOT_FOUND when unreadable.
  static absl::StatusOr<std::unique_ptr<TokenStore>> Open(const std::string& path);

  // The principal of `token` (reloading the file first if it changed).
  // UNAUTHENTICATED for an empty or unknown token.
  absl::StatusOr<Principal> Authenticate(absl::string_view token);

  // Number of tokens currently loaded; reload count (tests, metrics).
  size_t size();
  int64_t reloads();

 private:
  struct Entry {
    unsigned char digest[32];
    Principal principal;
  };
  struct FileId {
    int64_t mtime_ns = 0, size = -1;
    uint64_t inode = 0;
    bool operator==(const FileId&) const = default;
  };
  explicit TokenStore(std::string path) : path_(std::move(path)) {}
  static absl::StatusOr<std::vector<Entry>> Parse(const std::string& path, const std::string& text);
  absl::Status ReloadIfChanged() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  absl::Mutex mu_;
  FileId loaded_ ABSL_GUARDED_BY(mu_);
  std::vector<Entry> entries_ ABSL_GUARDED_BY(mu_);
  int64_t reloads_ ABSL_GUARDED_BY(mu_) = 0;
};

// The token of an "authorization: Bearer <token>" entry ("" when absent or not
// a Bearer header).
std::string BearerFromMetadata(const std::multimap<grpc::string_ref, grpc::string_ref>& md);
// Same for an HTTP Authorization header value.
std::string BearerFromHeader(absl::string_view value);

// Client: the token from `token_file` (first non-empty, non-'#' line, trimmed),
// or $ZFARM_TOKEN when token_file is empty; "" when neither is set.
// INVALID_ARGUMENT "--token-file: ..." when the file is unreadable or empty.
absl::StatusOr<std::string> LoadClientToken(const std::string& token_file);

// Adds "authorization: Bearer <token>" to `ctx` (nothing for an empty token).
void AddBearerToken(grpc::ClientContext* ctx, const std::string& token);

}  // namespace zfarm::security

#endif  // ZFARM_PROTO_SECURITY_AUTH_H_
