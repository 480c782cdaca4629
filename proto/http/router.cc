#include "proto/http/router.h"

#include <algorithm>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "glog/logging.h"

namespace zfarm::http {

struct Router::Segment {
  enum Kind { kRest = 0, kParam = 1, kAffixed = 2, kLiteral = 3 };  // by specificity
  Kind kind = kLiteral;
  std::string literal;  // kLiteral: the text; others: the prefix
  std::string suffix;
  std::string name;
};

struct Router::Entry {
  std::string pattern;
  std::vector<Segment> segments;
  std::map<std::string, Route> by_method;
};

namespace {

std::vector<absl::string_view> SplitPath(absl::string_view path) {
  if (path.size() > 1) path = absl::StripSuffix(path, "/");
  absl::ConsumePrefix(&path, "/");
  if (path.empty()) return {};
  return absl::StrSplit(path, '/');
}

}  // namespace

Router& Router::Add(const std::string& method, const std::string& pattern, Handler handler,
                    RouteOptions options) {
  auto async = [handler = std::move(handler)](const Request& req, Responder r) {
    r.Finish(handler(req));
  };
  return AddRoute({method, pattern, std::move(async), options});
}

Router& Router::AddAsync(const std::string& method, const std::string& pattern,
                         AsyncHandler handler, RouteOptions options) {
  return AddRoute({method, pattern, std::move(handler), options});
}

Router& Router::AddRoute(Route route) {
  auto fail = [&](const std::string& why) -> Router& {
    absl::Status s = absl::InvalidArgumentError(
        absl::StrCat("route ", route.method, " '", route.pattern, "': ", why));
    LOG(ERROR) << "event=http_bad_route error=\"" << s.message() << "\"";
    if (status_.ok()) status_ = s;
    return *this;
  };
  if (!absl::StartsWith(route.pattern, "/")) return fail("does not start with '/'");
  if (route.method.empty() || route.method == "HEAD") return fail("method must be set (not HEAD)");
  std::vector<Segment> segments;
  std::vector<absl::string_view> parts = SplitPath(route.pattern);
  for (size_t i = 0; i < parts.size(); ++i) {
    absl::string_view p = parts[i];
    Segment seg;
    const size_t open = p.find('{');
    const size_t close = p.find('}');
    if (open == absl::string_view::npos && close == absl::string_view::npos) {
      seg.literal = std::string(p);
    } else if (open == absl::string_view::npos || close == absl::string_view::npos ||
               close < open || p.find('{', open + 1) != absl::string_view::npos ||
               p.find('}', close + 1) != absl::string_view::npos) {
      return fail("unbalanced or repeated braces");
    } else {
      seg.literal = std::string(p.substr(0, open));
      seg.suffix = std::string(p.substr(close + 1));
      seg.name = std::string(p.substr(open + 1, close - open - 1));
      if (absl::EndsWith(seg.name, "*")) {
        seg.name.pop_back();
        if (i + 1 != parts.size() || !seg.literal.empty() || !seg.suffix.empty()) {
          return fail("{name*} must be a whole, last segment");
        }
        seg.kind = Segment::kRest;
      } else {
        seg.kind = seg.literal.empty() && seg.suffix.empty() ? Segment::kParam : Segment::kAffixed;
      }
      if (seg.name.empty()) return fail("empty parameter name");
    }
    segments.push_back(std::move(seg));
  }
  // Patterns that differ only in parameter names are the same path.
  auto shape = [](const std::vector<Segment>& segs) {
    return absl::StrJoin(segs, "/", [](std::string* out, const Segment& s) {
      absl::StrAppend(out, s.literal, s.kind == Segment::kLiteral ? "" : "{}", s.suffix,
                      s.kind == Segment::kRest ? "*" : "");
    });
  };
  const std::string key = shape(segments);
  std::shared_ptr<Entry> entry;
  for (const auto& e : entries_) {
    if (shape(e->segments) == key) entry = e;
  }
  if (entry == nullptr) {
    entry = std::make_shared<Entry>();
    entry->pattern = route.pattern;
    entry->segments = std::move(segments);
    entries_.push_back(entry);
  }
  if (entry->by_method.count(route.method) > 0) return fail("added twice");
  const std::string method = route.method;
  entry->by_method.emplace(method, std::move(route));
  return *this;
}

std::vector<std::pair<std::string, std::string>> Router::Routes() const {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& e : entries_) {
    for (const auto& [method, route] : e->by_method) out.emplace_back(method, route.pattern);
  }
  return out;
}

Router::Match Router::Find(const std::string& method, const std::string& path) const {
  Match best;
  std::vector<int> best_rank;
  std::set<std::string> allow;
  const std::vector<absl::string_view> parts = SplitPath(path);
  std::vector<std::string> decoded(parts.size());
  for (size_t i = 0; i < parts.size(); ++i) {
    if (!PercentDecode(parts[i], false, &decoded[i])) {
      best.bad_path = true;
      return best;
    }
  }
  const std::string lookup = method == "HEAD" ? "GET" : method;
  for (const auto& e : entries_) {
    const std::vector<Segment>& segs = e->segments;
    std::map<std::string, std::string> params;
    std::vector<int> rank;
    bool ok = true;
    size_t i = 0;
    for (; i < segs.size() && ok; ++i) {
      const Segment& s = segs[i];
      rank.push_back(s.kind);
      if (s.kind == Segment::kRest) {
        if (i >= parts.size()) {
          ok = false;
          break;
        }
        params[s.name] = absl::StrJoin(decoded.begin() + i, decoded.end(), "/");
        i = parts.size();
        break;
      }
      if (i >= parts.size()) {
        ok = false;
        break;
      }
      const std::string& d = decoded[i];
      if (s.kind == Segment::kLiteral) {
        ok = d == s.literal;
      } else {
        ok = d.size() > s.literal.size() + s.suffix.size() && absl::StartsWith(d, s.literal) &&
             absl::EndsWith(d, s.suffix);
        if (ok) {
          params[s.name] =
              d.substr(s.literal.size(), d.size() - s.literal.size() - s.suffix.size());
        }
      }
    }
    if (!ok || i != parts.size()) continue;
    for (const auto& [m, unused] : e->by_method) {
      allow.insert(m);
      if (m == "GET") allow.insert("HEAD");
    }
    auto it = e->by_method.find(lookup);
    if (it == e->by_method.end()) continue;
    if (best.route == nullptr || rank > best_rank) {
      best.route = &it->second;
      best.params = std::move(params);
      best_rank = std::move(rank);
    }
  }
  if (best.route == nullptr) best.allow = absl::StrJoin(allow, ", ");
  return best;
}

}  // namespace zfarm::http
