#include "proto/http/responder.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace zfarm::http {

namespace internal {
ExchangeToken::~ExchangeToken() {
  // Both are no-ops when answered / not streaming.
  exchange->Finish(Response::Error(500, "INTERNAL", "handler did not answer"));
  exchange->End();
}
}  // namespace internal

void Responder::Finish(Response response) const { token_->exchange->Finish(std::move(response)); }

EventStream Responder::StartEventStream(Headers headers) const {
  token_->exchange->StartStream(std::move(headers));
  return EventStream(token_);
}

bool Responder::cancelled() const { return token_->exchange->cancelled(); }

void Responder::OnCancel(std::function<void()> callback) const {
  token_->exchange->OnCancel(std::move(callback));
}

bool EventStream::Send(absl::string_view event, absl::string_view data, absl::string_view id) {
  std::string out;
  // Field values end at a line break: keep event names and ids on one line.
  auto one_line = [](absl::string_view v) {
    return std::string(v.substr(0, v.find_first_of("\r\n")));
  };
  if (!event.empty()) absl::StrAppend(&out, "event: ", one_line(event), "\n");
  if (!id.empty()) absl::StrAppend(&out, "id: ", one_line(id), "\n");
  for (absl::string_view line : absl::StrSplit(data, '\n')) {
    absl::ConsumeSuffix(&line, "\r");
    absl::StrAppend(&out, "data: ", line, "\n");
  }
  out += "\n";
  return token_->exchange->Write(std::move(out));
}

bool EventStream::Comment(absl::string_view text) {
  std::string out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    absl::ConsumeSuffix(&line, "\r");
    absl::StrAppend(&out, ": ", line, "\n");
  }
  out += "\n";
  return token_->exchange->Write(std::move(out));
}

void EventStream::End() { token_->exchange->End(); }

bool EventStream::closed() const { return token_->exchange->cancelled(); }

void EventStream::OnClose(std::function<void()> callback) {
  token_->exchange->OnCancel(std::move(callback));
}

}  // namespace zfarm::http
