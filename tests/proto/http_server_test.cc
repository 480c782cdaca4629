// zfarm::http::HttpServer and the /metrics server: routes, JSON errors for
// the server's own refusals, listen errors naming the flag, HTTPS and mutual
// TLS with certificates made at test time, and a real cpp-httplib client.
#include "proto/http/http_server.h"

#include <httplib.h>

#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "prometheus/counter.h"
#include "prometheus/registry.h"
#include "proto/http/metrics_server.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_certs.h"

namespace zfarm::http {
namespace {

using ::testing::HasSubstr;
using ::zfarm::testing::StatusIs;
using json = nlohmann::json;

std::string TempDir(const std::string& name) {
  std::string d =
      std::filesystem::temp_directory_path() / absl::StrCat("zfarm-http-", getpid(), "-", name);
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

absl::StatusOr<std::unique_ptr<HttpServer>> StartHello(HttpServer::Options o) {
  Router r;
  r.Add("GET", "/hello", [](const Request&) { return Response::Text(200, "hi"); });
  r.Add("POST", "/echo", [](const Request& req) { return Response::Text(200, req.body); });
  return HttpServer::Start(o, std::move(r));
}

TEST(HttpServerTest, ServesRoutesAndAnswersItsOwnRefusalsWithJson) {
  HttpServer::Options o;
  o.max_body_bytes = 1000;
  ASSERT_OK_AND_ASSIGN(auto srv, StartHello(o));
  ASSERT_GT(srv->port(), 0);
  httplib::Client cli("127.0.0.1", srv->port());
  auto r = cli.Get("/hello");
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "hi");

  r = cli.Get("/nope");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(json::parse(r->body)["code"], "NOT_FOUND");

  r = cli.Post("/echo", std::string(999, 'x'), "text/plain");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body.size(), 999u);
  r = cli.Post("/echo", std::string(1001, 'x'), "text/plain");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(json::parse(r->body)["code"], "INVALID_ARGUMENT");
  EXPECT_THAT(json::parse(r->body)["message"].get<std::string>(),
              HasSubstr("body: over 1000 bytes"));
}

TEST(HttpServerTest, BadOrBusyListenAddressNamesTheFlag) {
  HttpServer::Options o;
  o.flag = "--metrics-listen";
  o.listen = "no-port-here";
  EXPECT_THAT(StartHello(o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--metrics-listen")));
  o.listen = "127.0.0.1:70000";
  EXPECT_THAT(StartHello(o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("0..65535")));
  o.listen = "127.0.0.1:0";
  ASSERT_OK_AND_ASSIGN(auto first, StartHello(o));
  o.listen = absl::StrCat("127.0.0.1:", first->port());
  EXPECT_THAT(StartHello(o).status(),
              StatusIs(absl::StatusCode::kUnavailable,
                       HasSubstr("--metrics-listen: cannot listen on '" + o.listen + "'")));
}

TEST(HttpServerTest, HttpsAndMutualTls) {
  const std::string d = TempDir("tls");
  ASSERT_OK(zfarm::testing::MakeTestCertificates(d));
  HttpServer::Options o;
  o.tls = {d + "/server.pem", d + "/server.key", ""};
  auto get = [](httplib::SSLClient& cli) {
    cli.set_connection_timeout(5);
    cli.enable_server_certificate_verification(true);
    auto r = cli.Get("/hello");
    return r ? r->status : -1;
  };
  {
    ASSERT_OK_AND_ASSIGN(auto srv, StartHello(o));
    httplib::SSLClient trusted("127.0.0.1", srv->port());
    trusted.set_ca_cert_path((d + "/ca.pem").c_str());
    EXPECT_EQ(get(trusted), 200);
    httplib::SSLClient wrong_ca("127.0.0.1", srv->port());
    wrong_ca.set_ca_cert_path((d + "/rogue.pem").c_str());
    EXPECT_EQ(get(wrong_ca), -1);
    httplib::Client plain("127.0.0.1", srv->port());
    plain.set_connection_timeout(5);
    plain.set_read_timeout(5);
    auto r = plain.Get("/hello");
    EXPECT_TRUE(!r || r->status != 200);  // plaintext to a TLS port never succeeds
  }
  // Mutual TLS: a client certificate signed by the client CA is required.
  o.tls.ca = d + "/ca.pem";
  ASSERT_OK_AND_ASSIGN(auto srv, StartHello(o));
  httplib::SSLClient with_cert("127.0.0.1", srv->port(), d + "/client.pem", d + "/client.key");
  with_cert.set_ca_cert_path((d + "/ca.pem").c_str());
  EXPECT_EQ(get(with_cert), 200);
  httplib::SSLClient no_cert("127.0.0.1", srv->port());
  no_cert.set_ca_cert_path((d + "/ca.pem").c_str());
  EXPECT_EQ(get(no_cert), -1);
  httplib::SSLClient rogue_cert("127.0.0.1", srv->port(), d + "/rogue.pem", d + "/rogue.key");
  rogue_cert.set_ca_cert_path((d + "/ca.pem").c_str());
  EXPECT_EQ(get(rogue_cert), -1);

  // Bad TLS flags name the flag and the file.
  o.tls = {d + "/server.pem", "", ""};
  EXPECT_THAT(StartHello(o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--tls-key")));
  o.tls = {d + "/server.pem", d + "/client.key", ""};
  EXPECT_THAT(StartHello(o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("client.key")));
  std::filesystem::remove_all(d);
}

TEST(MetricsServerTest, ServesTheRegistryInTextFormatOverHttpAndHttps) {
  auto registry = std::make_shared<prometheus::Registry>();
  auto& family =
      prometheus::BuildCounter().Name("zfarm_test_events_total").Help("t").Register(*registry);
  family.Add({{"kind", "a"}}).Increment(3);
  ASSERT_OK_AND_ASSIGN(auto plain, StartMetricsServer("127.0.0.1:0", {}, registry));
  httplib::Client cli("127.0.0.1", plain->port());
  auto r = cli.Get("/metrics");
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200);
  EXPECT_THAT(r->get_header_value("Content-Type"), HasSubstr("text/plain; version=0.0.4"));
  EXPECT_THAT(r->body, HasSubstr("zfarm_test_events_total{kind=\"a\"} 3"));

  const std::string d = TempDir("metrics-tls");
  ASSERT_OK(zfarm::testing::MakeTestCertificates(d));
  ASSERT_OK_AND_ASSIGN(
      auto tls,
      StartMetricsServer("127.0.0.1:0", {d + "/server.pem", d + "/server.key", d + "/ca.pem"},
                         registry));
  family.Add({{"kind", "a"}}).Increment();
  httplib::SSLClient scraper("127.0.0.1", tls->port(), d + "/client.pem", d + "/client.key");
  scraper.set_ca_cert_path((d + "/ca.pem").c_str());
  scraper.enable_server_certificate_verification(true);
  r = scraper.Get("/metrics");
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_THAT(r->body, HasSubstr("zfarm_test_events_total{kind=\"a\"} 4"));
  std::filesystem::remove_all(d);
}

}  // namespace
}  // namespace zfarm::http
