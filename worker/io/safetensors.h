#ifndef ZFARM_WORKER_IO_SAFETENSORS_H_
#define ZFARM_WORKER_IO_SAFETENSORS_H_

// Read-only access to .safetensors files (https://github.com/huggingface/safetensors):
//   [u64 little-endian N][N bytes JSON header][data section]
// The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} with
// offsets relative to the data section, plus an optional "__metadata__" string map.
//
//   ZFARM_ASSIGN_OR_RETURN(auto weights, WeightSet::Open(dir + "/transformer"));
//   ZFARM_ASSIGN_OR_RETURN(TensorView v, weights->Get("x_pad_token"));
//   std::vector<float> buf(v.info->numel());
//   ConvertToF32(v, buf.data());
//
// Every header is bound checked when the file is opened; errors are absl::Status values
// naming the file, the key and the byte offset. Torch-free.

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace zfarm::worker {

// Element types accepted on disk; every other safetensors dtype is rejected by name.
// kF8E4M3 ("F8_E4M3", e4m3fn: 1 sign, 4 exponent bits of bias 7, 3 mantissa bits, no
// infinities, 0x7F/0xFF NaN) holds the FP8 weights cache's quantized weights.
enum class DType { kF32, kBF16, kF16, kF8E4M3 };
std::string_view DTypeName(DType dtype);  // "F32", "BF16", "F16", "F8_E4M3"
size_t DTypeSize(DType dtype);            // bytes per element
// Parses "F32" / "BF16" / "F16" / "F8_E4M3"; INVALID_ARGUMENT naming `s` otherwise.
absl::StatusOr<DType> ParseDType(std::string_view s);

// One entry of a safetensors header.
struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the data section
  int64_t numel() const;        // product of shape (1 for a scalar)
  uint64_t nbytes() const { return end - begin; }
};

// A tensor's bytes, valid while its file is open.
struct TensorView {
  const TensorInfo* info = nullptr;
  const uint8_t* data = nullptr;
  size_t size = 0;
};

// Header size limit (the safetensors library uses the same 100 MB bound).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// One .safetensors file, mmapped read-only; header fully bound-checked in Open().
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Parses a file image already in memory (not owned; must outlive the object). `path`
  // is only used in messages. Used by the fuzzer and the tests.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> FromBuffer(const uint8_t* data,
                                                                     size_t size,
                                                                     const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // header order
  const TensorInfo* Find(std::string_view name) const;                 // nullptr if absent
  TensorView View(const TensorInfo& t) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t file_size() const { return size_; }
  uint64_t data_offset() const { return data_offset_; }  // 8 + header length

 private:
  SafetensorsFile() = default;
  absl::Status Parse();

  std::string path_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  uint64_t data_offset_ = 0;
  bool mapped_ = false;  // munmap in the destructor
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

// A component's weights: either one *.safetensors file or a sharded set described by
// *.safetensors.index.json (weight_map name -> shard). Every shard is opened and checked.
class WeightSet {
 public:
  static absl::StatusOr<std::unique_ptr<WeightSet>> Open(const std::string& component_dir);
  // One .safetensors file on its own (a single-file checkpoint).
  static absl::StatusOr<std::unique_ptr<WeightSet>> OpenFile(const std::string& path);
  std::vector<std::string> Names() const;                       // sorted
  absl::StatusOr<TensorView> Get(std::string_view name) const;  // NOT_FOUND naming the key
  const TensorInfo* Find(std::string_view name) const;          // nullptr if absent
  size_t size() const { return entries_.size(); }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  WeightSet() = default;
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<const SafetensorsFile*, const TensorInfo*>, std::less<>> entries_;
};

// Converts one tensor's bytes to float32 or bfloat16 (raw uint16) in a caller buffer, for
// loaders that cast tensor by tensor without a whole fp32 copy of the model. `out` holds
// v.info->numel() elements.
void ConvertToF32(const TensorView& v, float* out);
void ConvertToBF16(const TensorView& v, uint16_t* out);  // round to nearest even

// Scalar conversions (exposed for tests and the generator).
float BF16ToF32(uint16_t v);
float F16ToF32(uint16_t v);
float F8E4M3ToF32(uint8_t v);  // exact; 0x7F and 0xFF give NaN
uint16_t F32ToBF16(float f);  // round to nearest even, NaN stays NaN
uint16_t F32ToF16(float f);   // round to nearest even

// Shape of a tensor to be written.
struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
};

// Header JSON for `specs` laid out in the given order ("__metadata__" first), padded with
// spaces to a multiple of 8 bytes. `offsets` (optional) gets each begin plus the total size.
std::string SafetensorsHeaderJson(const std::vector<TensorSpec>& specs,
                                  const std::map<std::string, std::string>& metadata,
                                  std::vector<uint64_t>* offsets);

class AtomicFile;

// Streams a .safetensors file tensor by tensor (bounded memory): the header is written
// first from the specs, then the caller appends each tensor's bytes in spec order, in as
// many chunks as it likes. Written to <path>.tmp.* and renamed by Finish().
class SafetensorsStreamWriter {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsStreamWriter>> Create(
      const std::string& path, std::vector<TensorSpec> specs,
      const std::map<std::string, std::string>& metadata);
  ~SafetensorsStreamWriter();
  absl::Status Append(std::string_view bytes);
  // Checks that every declared byte was written (or, with `sparse`, extends the file to its
  // full size with a hole — for header-scan benchmarks), then renames into place.
  absl::Status Finish(bool sparse = false);
  uint64_t data_bytes() const { return total_; }

 private:
  SafetensorsStreamWriter() = default;
  std::string path_;
  std::unique_ptr<AtomicFile> out_;
  uint64_t total_ = 0, written_ = 0, data_start_ = 0;
};

// Builds a .safetensors file. Tensors are laid out in the order the header lists them
// (keys sorted, as the Python library writes them); the file is written to a temporary
// name and renamed into place.
class SafetensorsWriter {
 public:
  // Copies `bytes` (must be numel * DTypeSize(dtype) long).
  absl::Status Add(std::string name, DType dtype, std::vector<int64_t> shape,
                   std::string_view bytes);
  void AddMetadata(std::string key, std::string value) { metadata_[key] = std::move(value); }
  // Serialized header JSON (without the length prefix and padding).
  std::string HeaderJson() const;
  absl::Status Write(const std::string& path) const;
  size_t size() const { return tensors_.size(); }

 private:
  struct Pending {
    DType dtype;
    std::vector<int64_t> shape;
    std::string bytes;
  };
  std::map<std::string, Pending> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_IO_SAFETENSORS_H_
