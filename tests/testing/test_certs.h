#ifndef ZFARM_TESTS_TESTING_TEST_CERTS_H_
#define ZFARM_TESTS_TESTING_TEST_CERTS_H_

// Certificates for TLS tests, made at test time with the openssl binary
// (deploy/install-deps.sh installs it; a missing binary fails the test):
//   ca.pem/ca.key          the test CA
//   server.pem/server.key  signed by it, for IP 127.0.0.1 and DNS localhost
//   client.pem/client.key  a client certificate signed by it
//   rogue.pem/rogue.key    a self-signed certificate nobody trusts
//
//   ASSERT_OK(zfarm::testing::MakeTestCertificates(dir));

#include <cstdlib>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace zfarm::testing {

inline absl::Status MakeTestCertificates(const std::string& dir) {
  const std::string cd = "cd '" + dir + "' && ";
  const std::string steps[] = {
      "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=zfarm-test-ca"
      " -keyout ca.key -out ca.pem",
      "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' > san && "
      "openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key"
      " -out server.csr && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key"
      " -CAcreateserial -days 2 -extfile san -out server.pem",
      "openssl req -newkey rsa:2048 -nodes -subj /CN=client -keyout client.key -out client.csr"
      " && openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2"
      " -out client.pem",
      "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=rogue -keyout rogue.key"
      " -out rogue.pem",
  };
  for (const std::string& step : steps) {
    const std::string cmd = "(" + cd + step + ") >/dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("making test certificates failed (the openssl binary is required; "
                       "deploy/install-deps.sh installs it): ",
                       step));
    }
  }
  return absl::OkStatus();
}

}  // namespace zfarm::testing

#endif  // ZFARM_TESTS_TESTING_TEST_CERTS_H_
