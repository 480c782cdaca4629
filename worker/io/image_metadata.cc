#include "worker/io/image_metadata.h"

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace zfarm::worker {
namespace {

constexpr uint16_t kExifIfdPointerTag = 0x8769;
constexpr uint16_t kUserCommentTag = 0x9286;
constexpr uint16_t kTypeLong = 4;
constexpr uint16_t kTypeUndefined = 7;
constexpr char kUnicodeCode[8] = {'U', 'N', 'I', 'C', 'O', 'D', 'E', '\0'};
constexpr char kAsciiCode[8] = {'A', 'S', 'C', 'I', 'I', '\0', '\0', '\0'};
constexpr char kUndefinedCode[8] = {'\0', '\0', '\0', '\0', '\0', '\0', '\0', '\0'};
constexpr uint32_t kReplacement = 0xFFFD;

void Put16(std::string* out, uint16_t v) {
  out->push_back(static_cast<char>(v >> 8));
  out->push_back(static_cast<char>(v & 0xff));
}
void Put32(std::string* out, uint32_t v) {
  Put16(out, static_cast<uint16_t>(v >> 16));
  Put16(out, static_cast<uint16_t>(v & 0xffff));
}

// Decodes UTF-8 into code points; an invalid sequence becomes U+FFFD.
std::vector<uint32_t> CodePoints(absl::string_view s) {
  std::vector<uint32_t> out;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t i = 0, n = s.size();
  while (i < n) {
    unsigned c = p[i];
    int len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    bool ok = len > 0 && i + len <= n;
    for (int k = 1; ok && k < len; ++k) {
      ok = (p[i + k] & 0xC0) == 0x80;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    ok = ok && !((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
                 cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF));
    out.push_back(ok ? cp : kReplacement);
    i += ok ? len : 1;
  }
  return out;
}

void AppendUtf8(std::string* out, uint32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Reads a TIFF structure in either byte order, bounds-checked.
class TiffReader {
 public:
  TiffReader(absl::string_view data, bool big_endian) : data_(data), big_endian_(big_endian) {}
  bool U16(size_t at, uint16_t* v) const {
    if (at + 2 > data_.size() || at + 2 < at) return false;
    const auto* p = reinterpret_cast<const unsigned char*>(data_.data() + at);
    *v = big_endian_ ? static_cast<uint16_t>(p[0] << 8 | p[1]) : static_cast<uint16_t>(p[1] << 8 | p[0]);
    return true;
  }
  bool U32(size_t at, uint32_t* v) const {
    uint16_t a, b;
    if (!U16(at, &a) || !U16(at + 2, &b)) return false;
    *v = big_endian_ ? (uint32_t{a} << 16 | b) : (uint32_t{b} << 16 | a);
    return true;
  }
  // Finds `tag` in the IFD at `ifd`: its type, count and value offset field.
  absl::Status Find(size_t ifd, uint16_t tag, uint16_t* type, uint32_t* count, size_t* value_at,
                    bool* found) const {
    uint16_t n;
    if (!U16(ifd, &n)) return absl::InvalidArgumentError("exif: IFD offset past the end");
    *found = false;
    for (uint16_t i = 0; i < n; ++i) {
      const size_t e = ifd + 2 + size_t{i} * 12;
      uint16_t t;
      if (!U16(e, &t) || !U16(e + 2, type) || !U32(e + 4, count) || e + 12 > data_.size()) {
        return absl::InvalidArgumentError("exif: IFD entry past the end");
      }
      if (t == tag) {
        *value_at = e + 8;
        *found = true;
        return absl::OkStatus();
      }
    }
    return absl::OkStatus();
  }
  absl::string_view data() const { return data_; }
  bool big_endian() const { return big_endian_; }

 private:
  absl::string_view data_;
  bool big_endian_;
};

std::string XmlEscape(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\r': out += "&#13;"; break;
      default:
        if (c >= 0x20 || c == '\t' || c == '\n') out.push_back(ch);
    }
  }
  return out;
}

std::string XmlUnescape(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      out.push_back(s[i]);
      continue;
    }
    const size_t semi = s.find(';', i);
    if (semi == absl::string_view::npos) {
      out.append(s.data() + i, s.size() - i);
      break;
    }
    absl::string_view ent = s.substr(i + 1, semi - i - 1);
    uint32_t cp = 0;
    bool ok = true;
    if (ent == "amp") cp = '&';
    else if (ent == "lt") cp = '<';
    else if (ent == "gt") cp = '>';
    else if (ent == "quot") cp = '"';
    else if (ent == "apos") cp = '\'';
    else if (absl::StartsWith(ent, "#x") || absl::StartsWith(ent, "#X")) {
      ok = ent.size() > 2 && ent.size() <= 8;
      for (size_t k = 2; ok && k < ent.size(); ++k) {
        const char c = ent[k];
        const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        ok = d >= 0;
        cp = cp * 16 + static_cast<uint32_t>(d);
      }
    } else if (absl::StartsWith(ent, "#")) {
      ok = ent.size() > 1 && ent.size() <= 8;
      for (size_t k = 1; ok && k < ent.size(); ++k) {
        ok = ent[k] >= '0' && ent[k] <= '9';
        cp = cp * 10 + static_cast<uint32_t>(ent[k] - '0');
      }
    } else {
      ok = false;
    }
    if (!ok || cp > 0x10FFFF) {
      out.append(s.data() + i, semi - i + 1);
    } else {
      AppendUtf8(&out, cp);
    }
    i = semi;
  }
  return out;
}

// The text between `open` (an element's start tag, or a prefix of it ending
// before '>') and `close` after it; empty when absent.
std::string ElementText(absl::string_view xmp, absl::string_view open, absl::string_view close) {
  size_t start = xmp.find(open);
  if (start == absl::string_view::npos) return "";
  start = xmp.find('>', start);
  if (start == absl::string_view::npos) return "";
  ++start;
  const size_t end = xmp.find(close, start);
  if (end == absl::string_view::npos) return "";
  return XmlUnescape(xmp.substr(start, end - start));
}

}  // namespace

std::string ExifWithUserComment(absl::string_view utf8_text) {
  std::string body(kUnicodeCode, sizeof(kUnicodeCode));
  for (uint32_t cp : CodePoints(utf8_text)) {
    if (cp >= 0x10000) {
      cp -= 0x10000;
      Put16(&body, static_cast<uint16_t>(0xD800 | (cp >> 10)));
      Put16(&body, static_cast<uint16_t>(0xDC00 | (cp & 0x3FF)));
    } else {
      Put16(&body, static_cast<uint16_t>(cp));
    }
  }
  // Header (8) | IFD0: 1 entry (18) | Exif IFD: 1 entry (18) | UserComment bytes.
  constexpr uint32_t kIfd0 = 8, kExifIfd = kIfd0 + 18, kData = kExifIfd + 18;
  std::string out = "MM";
  Put16(&out, 42);
  Put32(&out, kIfd0);
  Put16(&out, 1);
  Put16(&out, kExifIfdPointerTag);
  Put16(&out, kTypeLong);
  Put32(&out, 1);
  Put32(&out, kExifIfd);
  Put32(&out, 0);  // no next IFD
  Put16(&out, 1);
  Put16(&out, kUserCommentTag);
  Put16(&out, kTypeUndefined);
  Put32(&out, static_cast<uint32_t>(body.size()));
  Put32(&out, kData);
  Put32(&out, 0);
  out += body;
  return out;
}

// One straight story: TIFF header, IFD0, the Exif IFD pointer, the UserComment entry,
// its character-code prefix; each step bounds-checked where it reads.
absl::StatusOr<std::string> UserCommentFromExif(absl::string_view exif) {
  if (absl::StartsWith(exif, absl::string_view("Exif\0\0", 6))) exif.remove_prefix(6);
  if (exif.size() < 8 || !(absl::StartsWith(exif, "MM") || absl::StartsWith(exif, "II"))) {
    return absl::InvalidArgumentError("exif: no TIFF byte-order mark (MM or II)");
  }
  const TiffReader r(exif, exif[0] == 'M');
  uint16_t magic;
  uint32_t ifd0;
  if (!r.U16(2, &magic) || magic != 42 || !r.U32(4, &ifd0)) {
    return absl::InvalidArgumentError("exif: bad TIFF header");
  }
  uint16_t type;
  uint32_t count;
  size_t value_at;
  bool found;
  if (absl::Status s = r.Find(ifd0, kExifIfdPointerTag, &type, &count, &value_at, &found); !s.ok()) {
    return s;
  }
  if (!found) return absl::NotFoundError("exif: no Exif IFD (so no UserComment)");
  uint32_t exif_ifd;
  if (!r.U32(value_at, &exif_ifd)) return absl::InvalidArgumentError("exif: bad Exif IFD pointer");
  if (absl::Status s = r.Find(exif_ifd, kUserCommentTag, &type, &count, &value_at, &found); !s.ok()) {
    return s;
  }
  if (!found) return absl::NotFoundError("exif: no UserComment");
  if (count < 8) return absl::InvalidArgumentError("exif: UserComment shorter than its character code");
  uint32_t data_at;
  if (count <= 4) {
    data_at = static_cast<uint32_t>(value_at);
  } else if (!r.U32(value_at, &data_at)) {
    return absl::InvalidArgumentError("exif: bad UserComment offset");
  }
  if (size_t{data_at} + count > exif.size()) {
    return absl::InvalidArgumentError("exif: UserComment runs past the end of the block");
  }
  absl::string_view code = exif.substr(data_at, 8);
  absl::string_view text = exif.substr(data_at + 8, count - 8);
  if (code == absl::string_view(kAsciiCode, 8) || code == absl::string_view(kUndefinedCode, 8)) {
    while (!text.empty() && text.back() == '\0') text.remove_suffix(1);
    return std::string(text);
  }
  if (code != absl::string_view(kUnicodeCode, 8)) {
    return absl::InvalidArgumentError("exif: UserComment character code is not ASCII or UNICODE");
  }
  // UNICODE is UTF-16 in the block's byte order.
  const TiffReader t(text, r.big_endian());
  std::string out;
  for (size_t i = 0; i + 1 < text.size(); i += 2) {
    uint16_t u;
    t.U16(i, &u);
    uint32_t cp = u;
    if (u >= 0xD800 && u <= 0xDBFF) {
      uint16_t lo;
      if (i + 3 < text.size() && t.U16(i + 2, &lo) && lo >= 0xDC00 && lo <= 0xDFFF) {
        cp = 0x10000 + ((uint32_t{u} - 0xD800) << 10) + (lo - 0xDC00);
        i += 2;
      } else {
        cp = kReplacement;
      }
    } else if (u >= 0xDC00 && u <= 0xDFFF) {
      cp = kReplacement;
    }
    AppendUtf8(&out, cp);
  }
  while (!out.empty() && out.back() == '\0') out.pop_back();
  return out;
}

std::string XmpPacket(absl::string_view parameters, absl::string_view json) {
  return absl::StrCat(
      "<?xpacket begin=\"\xEF\xBB\xBF\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\n"
      "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\">\n"
      " <rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\n"
      "  <rdf:Description rdf:about=\"\"\n"
      "    xmlns:dc=\"http://purl.org/dc/elements/1.1/\"\n"
      "    xmlns:zfarm=\"urn:zfarm:v1\">\n"
      "   <dc:description><rdf:Alt><rdf:li xml:lang=\"x-default\">",
      XmlEscape(parameters),
      "</rdf:li></rdf:Alt></dc:description>\n"
      "   <zfarm:parameters>",
      XmlEscape(json),
      "</zfarm:parameters>\n"
      "  </rdf:Description>\n"
      " </rdf:RDF>\n"
      "</x:xmpmeta>\n"
      "<?xpacket end=\"w\"?>");
}

absl::StatusOr<XmpFields> ParseXmp(absl::string_view xmp) {
  if (xmp.find("<x:xmpmeta") == absl::string_view::npos) {
    return absl::InvalidArgumentError("xmp: no x:xmpmeta element");
  }
  XmpFields f;
  const size_t desc = xmp.find("<dc:description");
  if (desc != absl::string_view::npos) {
    absl::string_view rest = xmp.substr(desc);
    rest = rest.substr(0, rest.find("</dc:description>"));
    f.parameters = ElementText(rest, "<rdf:li", "</rdf:li>");
  }
  f.json = ElementText(xmp, "<zfarm:parameters", "</zfarm:parameters>");
  return f;
}

}  // namespace zfarm::worker
