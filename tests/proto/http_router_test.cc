// zfarm::http::Router: exact, parameterised, affixed and rest-of-path routes,
// specificity, 405 Allow lists, bad patterns; Request helpers.
#include "proto/http/router.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/http/message.h"

namespace zfarm::http {
namespace {

using ::testing::HasSubstr;

Router::Handler Named(const std::string& name) {
  return [name](const Request&) { return Response::Text(200, name); };
}

// Which route answers: the pattern of the found route, or "405:<allow>" /
// "404" / "400".
std::string Which(const Router& r, const std::string& method, const std::string& path,
                  std::map<std::string, std::string>* params = nullptr) {
  Router::Match m = r.Find(method, path);
  if (m.bad_path) return "400";
  if (m.route == nullptr) return m.allow.empty() ? "404" : "405:" + m.allow;
  if (params != nullptr) *params = m.params;
  return m.route->pattern;
}

TEST(RouterTest, ExactParamAffixedAndRestRoutes) {
  Router r;
  r.Add("GET", "/v1/jobs", Named("list"))
      .Add("POST", "/v1/jobs", Named("submit"))
      .Add("GET", "/v1/jobs/{id}", Named("get"))
      .Add("GET", "/v1/jobs/{id}/image", Named("image"))
      .Add("GET", "/v1/workers/{name}", Named("worker"))
      .Add("POST", "/v1/workers/{name}:drain", Named("drain"))
      .Add("GET", "/ui/{file*}", Named("asset"))
      .Add("GET", "/ui/index.html", Named("index"));
  ASSERT_TRUE(r.status().ok()) << r.status();

  std::map<std::string, std::string> p;
  EXPECT_EQ(Which(r, "GET", "/v1/jobs"), "/v1/jobs");
  EXPECT_EQ(Which(r, "GET", "/v1/jobs/"), "/v1/jobs");  // trailing slash ignored
  EXPECT_EQ(Which(r, "POST", "/v1/jobs"), "/v1/jobs");
  EXPECT_EQ(Which(r, "GET", "/v1/jobs/j-1", &p), "/v1/jobs/{id}");
  EXPECT_EQ(p["id"], "j-1");
  EXPECT_EQ(Which(r, "GET", "/v1/jobs/a%2Fb/image", &p), "/v1/jobs/{id}/image");
  EXPECT_EQ(p["id"], "a/b");  // decoded after splitting
  EXPECT_EQ(Which(r, "POST", "/v1/workers/gpu-0:drain", &p), "/v1/workers/{name}:drain");
  EXPECT_EQ(p["name"], "gpu-0");
  EXPECT_EQ(Which(r, "GET", "/v1/workers/gpu-0:drain", &p), "/v1/workers/{name}");
  EXPECT_EQ(p["name"], "gpu-0:drain");
  EXPECT_EQ(Which(r, "GET", "/ui/css/site.css", &p), "/ui/{file*}");
  EXPECT_EQ(p["file"], "css/site.css");
  EXPECT_EQ(Which(r, "GET", "/ui/index.html"), "/ui/index.html");  // literal beats {*}
  EXPECT_EQ(Which(r, "HEAD", "/v1/jobs/x"), "/v1/jobs/{id}");      // HEAD runs GET

  EXPECT_EQ(Which(r, "GET", "/ui"), "404");  // {*} needs a segment
  EXPECT_EQ(Which(r, "GET", "/v1/jobs/a/b/c"), "404");
  EXPECT_EQ(Which(r, "GET", "/nope"), "404");
  EXPECT_EQ(Which(r, "GET", "/v1/jobs/%zz"), "400");
  EXPECT_EQ(Which(r, "PUT", "/v1/jobs"), "405:GET, HEAD, POST");
  EXPECT_EQ(Which(r, "DELETE", "/v1/workers/w:drain"), "405:GET, HEAD, POST");
  EXPECT_EQ(Which(r, "POST", "/v1/workers/w"), "405:GET, HEAD");
}

TEST(RouterTest, BadPatternsAreReportedAndNotAdded) {
  Router r;
  r.Add("GET", "no-slash", Named("a"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("does not start with '/'"));
  Router r2;
  r2.Add("GET", "/a/{x", Named("a"));
  EXPECT_THAT(std::string(r2.status().message()), HasSubstr("braces"));
  Router r3;
  r3.Add("GET", "/a/{rest*}/b", Named("a"));
  EXPECT_THAT(std::string(r3.status().message()), HasSubstr("last segment"));
  Router r4;
  r4.Add("GET", "/a/{x}", Named("a")).Add("GET", "/a/{y}", Named("b"));
  EXPECT_THAT(std::string(r4.status().message()), HasSubstr("added twice"));
  EXPECT_EQ(Which(r4, "GET", "/a/1"), "/a/{x}");
}

TEST(MessageTest, HeadersAreCaseInsensitiveAndQueryHelpers) {
  Request q;
  q.headers.emplace("Content-Type", "application/json");
  q.query = {{"state", "queued"}, {"state", "running"}};
  q.path_params["id"] = "j";
  ASSERT_NE(q.Header("content-type"), nullptr);
  EXPECT_EQ(*q.Header("CONTENT-TYPE"), "application/json");
  EXPECT_EQ(q.Header("Accept"), nullptr);
  EXPECT_EQ(*q.Query("state"), "queued");
  EXPECT_EQ(q.Query("label"), nullptr);
  EXPECT_EQ(q.PathParam("id"), "j");
  EXPECT_EQ(q.PathParam("other"), "");

  std::string out;
  EXPECT_TRUE(PercentDecode("a%3Db+c", true, &out));
  EXPECT_EQ(out, "a=b c");
  EXPECT_TRUE(PercentDecode("a+b", false, &out));
  EXPECT_EQ(out, "a+b");
  EXPECT_FALSE(PercentDecode("a%2", true, &out));
  EXPECT_FALSE(PercentDecode("%g0", true, &out));
}

}  // namespace
}  // namespace zfarm::http
