#include "proto/http/message.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "nlohmann/json.hpp"

namespace zfarm::http {

bool CaseInsensitiveLess::operator()(absl::string_view a, absl::string_view b) const {
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const char x = absl::ascii_tolower(static_cast<unsigned char>(a[i]));
    const char y = absl::ascii_tolower(static_cast<unsigned char>(b[i]));
    if (x != y) return x < y;
  }
  return a.size() < b.size();
}

const std::string* Request::Header(absl::string_view name) const {
  auto it = headers.find(std::string(name));
  return it == headers.end() ? nullptr : &it->second;
}

const std::string* Request::Query(absl::string_view name) const {
  for (const auto& [k, v] : query) {
    if (k == name) return &v;
  }
  return nullptr;
}

const std::string& Request::PathParam(absl::string_view name) const {
  static const std::string* const kEmpty = new std::string;
  auto it = path_params.find(std::string(name));
  return it == path_params.end() ? *kEmpty : it->second;
}

Response Response::Json(int status, std::string body) {
  Response r;
  r.status = status;
  r.headers.emplace("Content-Type", "application/json");
  r.headers.emplace("Cache-Control", "no-store");
  r.body = std::move(body);
  return r;
}

Response Response::Error(int status, const std::string& code_name, const std::string& message) {
  return Json(status, JsonErrorBody(code_name, message));
}

Response Response::Text(int status, std::string body, absl::string_view content_type) {
  Response r;
  r.status = status;
  r.headers.emplace("Content-Type", std::string(content_type));
  r.body = std::move(body);
  return r;
}

std::string JsonErrorBody(const std::string& code_name, const std::string& message) {
  nlohmann::json j{{"code", code_name}, {"message", message}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

bool PercentDecode(absl::string_view in, bool plus_is_space, std::string* out) {
  out->clear();
  out->reserve(in.size());
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    c = absl::ascii_tolower(static_cast<unsigned char>(c));
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (size_t i = 0; i < in.size(); ++i) {
    const char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size()) return false;
      const int hi = hex(in[i + 1]);
      const int lo = hex(in[i + 2]);
      if (hi < 0 || lo < 0) return false;
      out->push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out->push_back(' ');
    } else {
      out->push_back(c);
    }
  }
  return true;
}

}  // namespace zfarm::http
