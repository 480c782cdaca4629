#include "worker/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "proto/base/status_macros.h"
#include "worker/io/file_util.h"

namespace zfarm::worker {
namespace {

using OJson = nlohmann::ordered_json;

uint64_t ReadLe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Reads a non-negative integer that fits in uint64 (JSON numbers may be negative or floats).
bool AsU64(const OJson& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer()) {
    int64_t v = j.get<int64_t>();
    if (v < 0) return false;
    *out = static_cast<uint64_t>(v);
    return true;
  }
  return false;
}

}  // namespace

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
    case DType::kF8E4M3:
      return "F8_E4M3";
  }
  return "?";
}

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kF8E4M3:
      return 1;
    case DType::kBF16:
    case DType::kF16:
      return 2;
  }
  return 4;
}

absl::StatusOr<DType> ParseDType(std::string_view s) {
  if (s == "F32") return DType::kF32;
  if (s == "BF16") return DType::kBF16;
  if (s == "F16") return DType::kF16;
  if (s == "F8_E4M3") return DType::kF8E4M3;
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported dtype '", Sv(s), "' (supported: F32, BF16, F16, F8_E4M3)"));
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---------------------------------------------------------------- SafetensorsFile

SafetensorsFile::~SafetensorsFile() {
  if (mapped_ && base_ != nullptr && size_ > 0) {
    munmap(const_cast<uint8_t*>(base_), size_);
  }
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    std::string msg = absl::StrCat(path, ": cannot open: ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::PermissionDeniedError(msg);
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->size_ = static_cast<uint64_t>(st.st_size);
  if (f->size_ > 0) {
    void* p = mmap(nullptr, f->size_, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      return absl::InternalError(absl::StrCat(path, ": mmap failed: ", std::strerror(err)));
    }
    f->base_ = static_cast<const uint8_t*>(p);
    f->mapped_ = true;
  }
  ::close(fd);
  ZFARM_RETURN_IF_ERROR(f->Parse());
  return f;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromBuffer(
    const uint8_t* data, size_t size, const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->base_ = data;
  f->size_ = size;
  ZFARM_RETURN_IF_ERROR(f->Parse());
  return f;
}

// Long on purpose: one pass over the header in file order, each bounds check next to
// the offset its message names; split, the reasoning about what is already checked
// would be spread over several functions.
absl::Status SafetensorsFile::Parse() {
  auto invalid = [this](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": ", parts...));
  };
  if (size_ < 8) {
    return invalid("file is ", size_, " bytes, shorter than the 8-byte header length at offset 0");
  }
  const uint64_t n = ReadLe64(base_);
  if (n > kMaxSafetensorsHeaderBytes) {
    return invalid("header length ", n, " at offset 0 exceeds the limit of ",
                   kMaxSafetensorsHeaderBytes, " bytes");
  }
  if (n > size_ - 8) {
    return invalid("header length ", n, " at offset 0 runs past the end of the file (", size_,
                   " bytes, header would end at byte ", 8 + n, ")");
  }
  if (n < 2) return invalid("header length ", n, " at offset 0 is too short for a JSON object");
  data_offset_ = 8 + n;
  const uint64_t data_size = size_ - data_offset_;

  OJson header = OJson::parse(base_ + 8, base_ + 8 + n, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) {
    // Locate the error for the message: re-run with exceptions, which carry the byte.
    std::string where;
    try {
      OJson unused = OJson::parse(base_ + 8, base_ + 8 + n);
      (void)unused;
    } catch (const nlohmann::json::parse_error& e) {
      where = absl::StrCat(" at byte ", 8 + e.byte - (e.byte > 0 ? 1 : 0), ": ", e.what());
    } catch (...) {
    }
    return invalid("header (bytes 8..", 8 + n, ") is not valid JSON", where);
  }
  if (!header.is_object()) return invalid("header at offset 8 is not a JSON object");

  tensors_.clear();
  index_.clear();
  metadata_.clear();
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& key = it.key();
    const OJson& v = it.value();
    if (key == "__metadata__") {
      if (!v.is_object()) return invalid("key '__metadata__' is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          return invalid("key '__metadata__.", m.key(), "' is not a string");
        }
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) return invalid("tensor '", key, "': entry is not an object");
    auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) {
      return invalid("tensor '", key, "': missing or non-string 'dtype'");
    }
    TensorInfo t;
    t.name = key;
    auto parsed = ParseDType(dt->get<std::string>());
    if (!parsed.ok()) return invalid("tensor '", key, "': ", parsed.status().message());
    t.dtype = *parsed;
    auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) return invalid("tensor '", key, "': missing 'shape'");
    if (sh->size() > 16) return invalid("tensor '", key, "': shape has ", sh->size(), " dims");
    // numel with overflow checks: bytes must fit in the file anyway.
    unsigned __int128 numel = 1;
    for (const OJson& d : *sh) {
      uint64_t dim;
      if (!AsU64(d, &dim) || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return invalid("tensor '", key, "': shape entry ", d.dump(), " is not a valid dimension");
      }
      t.shape.push_back(static_cast<int64_t>(dim));
      numel *= dim;
      if (numel > (static_cast<unsigned __int128>(1) << 64))
        numel = static_cast<unsigned __int128>(1) << 64;
    }
    auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !AsU64((*off)[0], &t.begin) ||
        !AsU64((*off)[1], &t.end)) {
      return invalid("tensor '", key, "': 'data_offsets' must be two non-negative integers");
    }
    if (t.end < t.begin) {
      return invalid("tensor '", key, "': data_offsets [", t.begin, ", ", t.end,
                     "] end before begin (file offset ", data_offset_ + t.begin, ")");
    }
    if (t.end > data_size) {
      return invalid("tensor '", key, "': data_offsets [", t.begin, ", ", t.end,
                     "] run past the end of the file: its data section (from file offset ",
                     data_offset_, ") holds only ", data_size,
                     " bytes (the file is truncated or its header damaged)");
    }
    const unsigned __int128 want = numel * DTypeSize(t.dtype);
    if (want != t.end - t.begin) {
      return invalid("tensor '", key, "': ", Sv(DTypeName(t.dtype)), " shape [",
                     absl::StrJoin(t.shape, ","), "] needs ",
                     want >= (static_cast<unsigned __int128>(1) << 64)
                         ? std::string("too many")
                         : absl::StrCat(static_cast<uint64_t>(want)),
                     " bytes but data_offsets [", t.begin, ", ", t.end, "] hold ", t.end - t.begin,
                     " (file offset ", data_offset_ + t.begin, ")");
    }
    if (index_.count(key) != 0) return invalid("tensor '", key, "' listed twice");
    index_.emplace(key, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  // The tensors must tile the data section exactly: sorted by offset, no gaps, no overlaps.
  std::vector<const TensorInfo*> order;
  order.reserve(tensors_.size());
  for (const TensorInfo& t : tensors_) order.push_back(&t);
  std::stable_sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t expect = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo* t : order) {
    if (t->begin < expect) {
      return invalid("tensor '", t->name, "': data_offsets [", t->begin, ", ", t->end,
                     "] overlap tensor '", prev->name, "' (ends at ", expect, ", file offset ",
                     data_offset_ + t->begin, ")");
    }
    if (t->begin > expect) {
      return invalid("tensor '", t->name, "': gap of ", t->begin - expect,
                     " unused bytes before data_offsets begin ", t->begin, " (file offset ",
                     data_offset_ + expect, ")");
    }
    expect = t->end;
    prev = t;
  }
  if (expect != data_size) {
    return invalid("data section has ", data_size - expect,
                   " trailing bytes not covered by any tensor (file offset ", data_offset_ + expect,
                   ")");
  }
  return absl::OkStatus();
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

TensorView SafetensorsFile::View(const TensorInfo& t) const {
  return TensorView{&t, base_ + data_offset_ + t.begin, static_cast<size_t>(t.end - t.begin)};
}

// ---------------------------------------------------------------- WeightSet

// One straight story: index or single file, open every shard, then check the index
// against the shards both ways (missing and unlisted tensors), in that order.
absl::StatusOr<std::unique_ptr<WeightSet>> WeightSet::Open(const std::string& component_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(component_dir, ec)) {
    return absl::NotFoundError(absl::StrCat(component_dir, ": not a directory"));
  }
  std::vector<std::string> indexes, singles;
  for (const auto& e : fs::directory_iterator(component_dir, ec)) {
    std::string name = e.path().filename().string();
    if (absl::EndsWith(name, ".safetensors.index.json"))
      indexes.push_back(name);
    else if (absl::EndsWith(name, ".safetensors"))
      singles.push_back(name);
  }
  std::sort(indexes.begin(), indexes.end());
  std::sort(singles.begin(), singles.end());
  std::unique_ptr<WeightSet> ws(new WeightSet());
  ws->dir_ = component_dir;

  if (!indexes.empty()) {
    if (indexes.size() > 1) {
      return absl::InvalidArgumentError(absl::StrCat(component_dir, ": more than one index file (",
                                                     absl::StrJoin(indexes, ", "), ")"));
    }
    const std::string index_path = component_dir + "/" + indexes[0];
    ZFARM_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(index_path, 64 << 20));
    OJson j = OJson::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": not a JSON object"));
    }
    auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": key 'weight_map' missing or not an object"));
    }
    std::map<std::string, const SafetensorsFile*> opened;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, ": key 'weight_map.", it.key(), "' is not a string"));
      }
      std::string shard = it.value().get<std::string>();
      if (shard.empty() || shard.find('/') != std::string::npos || shard == "..") {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": key 'weight_map.", it.key(),
                                                       "' names an invalid shard '", shard, "'"));
      }
      auto o = opened.find(shard);
      if (o == opened.end()) {
        auto f = SafetensorsFile::Open(component_dir + "/" + shard);
        if (!f.ok()) {
          if (absl::IsNotFound(f.status())) {
            return absl::NotFoundError(absl::StrCat(index_path, ": shard '", shard, "' (for key '",
                                                    it.key(),
                                                    "') is missing: ", f.status().message()));
          }
          return f.status();
        }
        ws->files_.push_back(*std::move(f));
        o = opened.emplace(shard, ws->files_.back().get()).first;
      }
      const TensorInfo* t = o->second->Find(it.key());
      if (t == nullptr) {
        return absl::NotFoundError(absl::StrCat(index_path, ": key '", it.key(),
                                                "' is mapped to shard '", shard,
                                                "' which does not contain it"));
      }
      ws->entries_[it.key()] = {o->second, t};
    }
    // Tensors present in a shard but not in the index would be silently ignored: reject.
    for (const auto& f : ws->files_) {
      for (const TensorInfo& t : f->tensors()) {
        auto e = ws->entries_.find(t.name);
        if (e == ws->entries_.end() || e->second.first != f.get()) {
          return absl::InvalidArgumentError(absl::StrCat(
              f->path(), ": tensor '", t.name, "' is not mapped to this shard by ", index_path));
        }
      }
    }
    return ws;
  }
  if (singles.empty()) {
    return absl::NotFoundError(
        absl::StrCat(component_dir, ": no *.safetensors or *.safetensors.index.json file"));
  }
  if (singles.size() > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(component_dir, ": several .safetensors files but no index.json (",
                     absl::StrJoin(singles, ", "), ")"));
  }
  return OpenFile(component_dir + "/" + singles[0]);
}

absl::StatusOr<std::unique_ptr<WeightSet>> WeightSet::OpenFile(const std::string& path) {
  ZFARM_ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(path));
  std::unique_ptr<WeightSet> ws(new WeightSet());
  ws->dir_ = path;
  ws->files_.push_back(std::move(f));
  for (const TensorInfo& t : ws->files_[0]->tensors()) {
    ws->entries_[t.name] = {ws->files_[0].get(), &t};
  }
  return ws;
}

std::vector<std::string> WeightSet::Names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, e] : entries_) out.push_back(name);
  return out;
}

const TensorInfo* WeightSet::Find(std::string_view name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : it->second.second;
}

absl::StatusOr<TensorView> WeightSet::Get(std::string_view name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    return absl::NotFoundError(absl::StrCat(dir_, ": no tensor named '", Sv(name), "'"));
  }
  return it->second.first->View(*it->second.second);
}

// ---------------------------------------------------------------- conversion

float BF16ToF32(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000 | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float F8E4M3ToF32(uint8_t v) {
  const int exp = (v >> 3) & 0xf, mant = v & 0x7;
  if (exp == 0xf && mant == 0x7) return std::numeric_limits<float>::quiet_NaN();
  // Subnormals: mant * 2^-9; normals: (8 + mant) * 2^(exp - 10), i.e. 1.mant * 2^(exp - 7).
  const float mag = exp == 0 ? std::ldexp(static_cast<float>(mant), -9)
                             : std::ldexp(static_cast<float>(8 + mant), exp - 10);
  return (v & 0x80) != 0 ? -mag : mag;
}

uint16_t F32ToBF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

uint16_t F32ToF16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t ax = x & 0x7fffffff;
  if (ax > 0x7f800000) return sign | 0x7e00;   // NaN
  if (ax >= 0x477ff000) return sign | 0x7c00;  // overflow -> inf
  if (ax < 0x38800000) {                       // subnormal or zero
    if (ax < 0x33000000) return sign;          // < half of smallest subnormal
    const uint32_t mant = (ax & 0x7fffff) | 0x800000;
    const int shift = 126 - static_cast<int>(ax >> 23);  // 14..24
    const uint32_t half = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t mid = 1u << (shift - 1);
    uint32_t r = half + ((rem > mid || (rem == mid && (half & 1))) ? 1 : 0);
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = ax - 0x38000000;  // rebias exponent 127 -> 15
  r += 0xfff + ((r >> 13) & 1);
  return static_cast<uint16_t>(sign | (r >> 13));
}

void ConvertToF32(const TensorView& v, float* out) {
  const size_t n = v.size / DTypeSize(v.info->dtype);
  if (n == 0) return;  // empty tensors: `out` may be null
  switch (v.info->dtype) {
    case DType::kF32:
      std::memcpy(out, v.data, n * 4);
      return;
    case DType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, v.data + 2 * i, 2);
        out[i] = BF16ToF32(h);
      }
      return;
    case DType::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, v.data + 2 * i, 2);
        out[i] = F16ToF32(h);
      }
      return;
    case DType::kF8E4M3:
      for (size_t i = 0; i < n; ++i) out[i] = F8E4M3ToF32(v.data[i]);
      return;
  }
}

void ConvertToBF16(const TensorView& v, uint16_t* out) {
  const size_t n = v.size / DTypeSize(v.info->dtype);
  if (n == 0) return;
  switch (v.info->dtype) {
    case DType::kBF16:
      std::memcpy(out, v.data, n * 2);
      return;
    case DType::kF32:
      for (size_t i = 0; i < n; ++i) {
        float f;
        std::memcpy(&f, v.data + 4 * i, 4);
        out[i] = F32ToBF16(f);
      }
      return;
    case DType::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, v.data + 2 * i, 2);
        out[i] = F32ToBF16(F16ToF32(h));
      }
      return;
    case DType::kF8E4M3:  // every e4m3 value is a bf16 value: exact
      for (size_t i = 0; i < n; ++i) out[i] = F32ToBF16(F8E4M3ToF32(v.data[i]));
      return;
  }
}

// ---------------------------------------------------------------- writers

std::string SafetensorsHeaderJson(const std::vector<TensorSpec>& specs,
                                  const std::map<std::string, std::string>& metadata,
                                  std::vector<uint64_t>* offsets) {
  // Layout: "__metadata__" first, then tensors in the given order, data in the same order.
  OJson h = OJson::object();
  if (!metadata.empty()) {
    OJson m = OJson::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    h["__metadata__"] = std::move(m);
  }
  uint64_t off = 0;
  if (offsets != nullptr) offsets->clear();
  for (const TensorSpec& s : specs) {
    uint64_t n = DTypeSize(s.dtype);
    for (int64_t d : s.shape) n *= static_cast<uint64_t>(d);
    OJson e = OJson::object();
    e["dtype"] = std::string(DTypeName(s.dtype));
    e["shape"] = s.shape;
    e["data_offsets"] = {off, off + n};
    h[s.name] = std::move(e);
    if (offsets != nullptr) offsets->push_back(off);
    off += n;
  }
  if (offsets != nullptr) offsets->push_back(off);
  std::string json = h.dump();
  // Pad with spaces to 8-byte alignment of the data section, as the Rust library does.
  while (json.size() % 8 != 0) json.push_back(' ');
  return json;
}

absl::Status SafetensorsWriter::Add(std::string name, DType dtype, std::vector<int64_t> shape,
                                    std::string_view bytes) {
  uint64_t n = DTypeSize(dtype);
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': negative dim"));
    n *= static_cast<uint64_t>(d);
  }
  if (n != bytes.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "': ", bytes.size(), " bytes given, shape needs ", n));
  }
  if (name == "__metadata__" || tensors_.count(name) != 0) {
    return absl::AlreadyExistsError(absl::StrCat("tensor '", name, "' added twice or reserved"));
  }
  tensors_[std::move(name)] = Pending{dtype, std::move(shape), std::string(bytes)};
  return absl::OkStatus();
}

std::string SafetensorsWriter::HeaderJson() const {
  std::vector<TensorSpec> specs;
  for (const auto& [name, p] : tensors_) specs.push_back({name, p.dtype, p.shape});
  return SafetensorsHeaderJson(specs, metadata_, nullptr);
}

absl::Status SafetensorsWriter::Write(const std::string& path) const {
  std::vector<TensorSpec> specs;
  for (const auto& [name, p] : tensors_) specs.push_back({name, p.dtype, p.shape});
  ZFARM_ASSIGN_OR_RETURN(auto w, SafetensorsStreamWriter::Create(path, specs, metadata_));
  for (const auto& [name, p] : tensors_) ZFARM_RETURN_IF_ERROR(w->Append(p.bytes));
  return w->Finish();
}

absl::StatusOr<std::unique_ptr<SafetensorsStreamWriter>> SafetensorsStreamWriter::Create(
    const std::string& path, std::vector<TensorSpec> specs,
    const std::map<std::string, std::string>& metadata) {
  std::unique_ptr<SafetensorsStreamWriter> w(new SafetensorsStreamWriter());
  w->path_ = path;
  std::vector<uint64_t> offsets;
  std::string json = SafetensorsHeaderJson(specs, metadata, &offsets);
  w->total_ = offsets.back();
  ZFARM_ASSIGN_OR_RETURN(w->out_, AtomicFile::Create(path));
  uint8_t len[8];
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
  ZFARM_RETURN_IF_ERROR(w->out_->Write(std::string_view(reinterpret_cast<char*>(len), 8)));
  ZFARM_RETURN_IF_ERROR(w->out_->Write(json));
  w->data_start_ = 8 + n;
  return w;
}

SafetensorsStreamWriter::~SafetensorsStreamWriter() = default;

absl::Status SafetensorsStreamWriter::Append(std::string_view bytes) {
  if (written_ + bytes.size() > total_) {
    return absl::OutOfRangeError(
        absl::StrCat(path_, ": more data than the header declares (", total_, " bytes)"));
  }
  written_ += bytes.size();
  return out_->Write(bytes);
}

absl::Status SafetensorsStreamWriter::Finish(bool sparse) {
  if (sparse) {
    ZFARM_RETURN_IF_ERROR(out_->Truncate(data_start_ + total_));
  } else if (written_ != total_) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, ": ", written_, " of ", total_, " data bytes written"));
  }
  return out_->Commit();
}

}  // namespace zfarm::worker
