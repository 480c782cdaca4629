#ifndef ZFARM_PROTO_SECURITY_TLS_H_
#define ZFARM_PROTO_SECURITY_TLS_H_

// File: tls.h
// TLS and mutual TLS for every zfarm port, from PEM files named by flags.
// One struct, read the same way by every binary:
//
//   server (zfarm-scheduler, zfarm-worker --health-listen):
//     --tls-cert FILE       certificate chain served to clients
//     --tls-key FILE        its private key
//     --tls-client-ca FILE  CA bundle; when set, clients MUST present a
//                           certificate signed by it (mutual TLS)
//   client (zfarm CLI, zfarm-worker's channel to the scheduler):
//     --tls-ca FILE         CA bundle that signed the server's certificate
//     --tls-cert/--tls-key  client certificate for mutual TLS
//
//   security::TlsFlags t{.cert = c, .key = k, .ca = ca};
//   ZFARM_ASSIGN_OR_RETURN(auto creds, security::ServerCredentials(t));
//   builder.AddListeningPort(addr, creds);
//   ZFARM_ASSIGN_OR_RETURN(auto ch, security::ClientCredentials(t));
//   grpc::CreateChannel(addr, ch);
//
// Everything empty = plaintext (insecure credentials); the files are read once,
// at the call. Errors are INVALID_ARGUMENT naming the flag and the file.
// Thread-safe (pure functions).

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace zfarm::security {

struct TlsFlags {
  std::string cert;  // PEM certificate chain (--tls-cert)
  std::string key;   // PEM private key (--tls-key)
  // PEM CA bundle: on a server the client CA (--tls-client-ca, enables mutual
  // TLS); on a client the server's CA (--tls-ca).
  std::string ca;

  // Server side: TLS when a certificate is configured.
  bool server_enabled() const { return !cert.empty(); }
  // Client side: TLS when a CA or a client certificate is configured.
  bool client_enabled() const { return !ca.empty() || !cert.empty(); }
};

// Insecure when !flags.server_enabled(); otherwise TLS with cert+key (both
// required), and when `ca` is set, client certificates are requested AND
// verified against it (a client without one fails the handshake).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const TlsFlags& flags);

// Insecure when !flags.client_enabled(); otherwise TLS verifying the server
// against `ca` (system roots when empty) and presenting cert+key when set
// (both or neither).
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ClientCredentials(const TlsFlags& flags);

// For the HTTP ports (cpp-httplib's SSLServer, OpenSSL): configures an SSL_CTX
// (passed as void*) with the server side of `flags`: certificate chain, key,
// TLS >= 1.2, and with `ca` set, required and verified client certificates.
//   httplib::SSLServer svr([&](SSL_CTX& ctx) {
//     return ConfigureServerSslCtx(&ctx, flags).ok(); });
absl::Status ConfigureServerSslCtx(void* ssl_ctx, const TlsFlags& flags);

// Reads a whole file; INVALID_ARGUMENT "<flag>: cannot read <path>" on error.
absl::StatusOr<std::string> ReadPemFile(const std::string& flag, const std::string& path);

}  // namespace zfarm::security

#endif  // ZFARM_PROTO_SECURITY_TLS_H_
