#ifndef ZFARM_WORKER_TEXT_UTF8_H_
#define ZFARM_WORKER_TEXT_UTF8_H_

// UTF-8 well-formedness check (Unicode Table 3-7: no overlong forms, no
// surrogates, nothing above U+10FFFF).

#include <cstdint>
#include <string_view>

namespace zfarm::worker::text {

// Returns -1 if `s` is well-formed UTF-8, else the byte offset of the first
// byte of the first ill-formed sequence.
int64_t Utf8ErrorOffset(std::string_view s);

}  // namespace zfarm::worker::text

#endif  // ZFARM_WORKER_TEXT_UTF8_H_
