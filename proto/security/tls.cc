#include "proto/security/tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace zfarm::security {
namespace {

std::string OpenSslError() {
  unsigned long e = ERR_get_error();
  if (e == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  ERR_clear_error();
  return buf;
}

absl::Status CheckPair(const TlsFlags& f, const char* cert_flag, const char* key_flag) {
  if (f.cert.empty() != f.key.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(cert_flag, " and ", key_flag, ": give both or neither"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> ReadPemFile(const std::string& flag, const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  if (!f) return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot read ", path));
  std::string data = ss.str();
  if (data.find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": ", path, " is not a PEM file"));
  }
  return data;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const TlsFlags& f) {
  if (!f.server_enabled()) {
    if (!f.key.empty() || !f.ca.empty()) {
      return absl::InvalidArgumentError("--tls-key/--tls-client-ca need --tls-cert");
    }
    return grpc::InsecureServerCredentials();
  }
  if (auto s = CheckPair(f, "--tls-cert", "--tls-key"); !s.ok()) return s;
  grpc::SslServerCredentialsOptions o(
      f.ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                   : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  auto cert = ReadPemFile("--tls-cert", f.cert);
  if (!cert.ok()) return cert.status();
  auto key = ReadPemFile("--tls-key", f.key);
  if (!key.ok()) return key.status();
  pair.cert_chain = *std::move(cert);
  pair.private_key = *std::move(key);
  o.pem_key_cert_pairs.push_back(std::move(pair));
  if (!f.ca.empty()) {
    auto ca = ReadPemFile("--tls-client-ca", f.ca);
    if (!ca.ok()) return ca.status();
    o.pem_root_certs = *std::move(ca);
  }
  return grpc::SslServerCredentials(o);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ClientCredentials(const TlsFlags& f) {
  if (!f.client_enabled()) {
    if (!f.key.empty()) return absl::InvalidArgumentError("--tls-key needs --tls-cert");
    return grpc::InsecureChannelCredentials();
  }
  if (auto s = CheckPair(f, "--tls-cert", "--tls-key"); !s.ok()) return s;
  grpc::SslCredentialsOptions o;
  if (!f.ca.empty()) {
    auto ca = ReadPemFile("--tls-ca", f.ca);
    if (!ca.ok()) return ca.status();
    o.pem_root_certs = *std::move(ca);
  }
  if (!f.cert.empty()) {
    auto cert = ReadPemFile("--tls-cert", f.cert);
    if (!cert.ok()) return cert.status();
    auto key = ReadPemFile("--tls-key", f.key);
    if (!key.ok()) return key.status();
    o.pem_cert_chain = *std::move(cert);
    o.pem_private_key = *std::move(key);
  }
  return grpc::SslCredentials(o);
}

absl::Status ConfigureServerSslCtx(void* raw, const TlsFlags& f) {
  SSL_CTX* ctx = static_cast<SSL_CTX*>(raw);
  if (ctx == nullptr) return absl::InvalidArgumentError("no SSL_CTX");
  if (!f.server_enabled() || f.key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key are required for TLS");
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  if (SSL_CTX_use_certificate_chain_file(ctx, f.cert.c_str()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("--tls-cert: ", f.cert, ": ", OpenSslError()));
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, f.key.c_str(), SSL_FILETYPE_PEM) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("--tls-key: ", f.key, ": ", OpenSslError()));
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-key: ", f.key, " does not match --tls-cert ", f.cert));
  }
  if (!f.ca.empty()) {
    if (SSL_CTX_load_verify_locations(ctx, f.ca.c_str(), nullptr) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls-client-ca: ", f.ca, ": ", OpenSslError()));
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  }
  return absl::OkStatus();
}

}  // namespace zfarm::security
