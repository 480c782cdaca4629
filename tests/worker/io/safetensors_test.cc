#include "worker/io/safetensors.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/worker/io/io_test_util.h"

namespace zfarm::worker {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::zfarm::testing::StatusIs;
using ::zfarm::worker::testing::FreshDir;
using ::zfarm::worker::testing::ReadAll;
using ::zfarm::worker::testing::WriteAll;

// [u64 LE len][header][data]
std::string Image(const std::string& header, const std::string& data) {
  std::string s(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
  return s + header + data;
}

absl::Status Parse(const std::string& image) {
  return SafetensorsFile::FromBuffer(reinterpret_cast<const uint8_t*>(image.data()), image.size(),
                                     "mem.safetensors")
      .status();
}

std::string Floats(std::vector<float> v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

TEST(SafetensorsTest, WriterRoundTrip) {
  const std::string dir = FreshDir("roundtrip");
  SafetensorsWriter w;
  ASSERT_OK(w.Add("b.weight", DType::kF32, {2, 2}, Floats({1, 2, 3, 4})));
  const uint16_t bf[3] = {F32ToBF16(1.5f), F32ToBF16(-2.0f), F32ToBF16(0.25f)};
  ASSERT_OK(w.Add("a.bias", DType::kBF16, {3}, std::string(reinterpret_cast<const char*>(bf), 6)));
  const uint16_t h[1] = {F32ToF16(0.5f)};
  ASSERT_OK(w.Add("c", DType::kF16, {}, std::string(reinterpret_cast<const char*>(h), 2)));
  w.AddMetadata("format", "pt");
  ASSERT_OK(w.Write(dir + "/x.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/x.safetensors.tmp." + std::to_string(getpid())));

  ASSERT_OK_AND_ASSIGN(auto f, SafetensorsFile::Open(dir + "/x.safetensors"));
  EXPECT_EQ(f->path(), dir + "/x.safetensors");
  ASSERT_EQ(f->tensors().size(), 3u);
  EXPECT_EQ(f->tensors()[0].name, "a.bias");  // keys sorted, data in the same order
  EXPECT_EQ(f->tensors()[1].name, "b.weight");
  EXPECT_EQ(f->tensors()[2].name, "c");
  EXPECT_EQ(f->data_offset() % 8, 0u);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->Find("nope"), nullptr);

  const TensorInfo* b = f->Find("b.weight");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, DType::kF32);
  EXPECT_THAT(b->shape, ElementsAre(2, 2));
  EXPECT_EQ(b->numel(), 4);
  std::vector<float> out(4);
  ConvertToF32(f->View(*b), out.data());
  EXPECT_THAT(out, ElementsAre(1, 2, 3, 4));

  const TensorInfo* a = f->Find("a.bias");
  std::vector<float> af(3);
  ConvertToF32(f->View(*a), af.data());
  EXPECT_THAT(af, ElementsAre(1.5f, -2.0f, 0.25f));
  std::vector<uint16_t> ab(4);
  ConvertToBF16(f->View(*b), ab.data());
  EXPECT_EQ(BF16ToF32(ab[2]), 3.0f);

  const TensorInfo* c = f->Find("c");
  EXPECT_EQ(c->numel(), 1);
  float cv = 0;
  ConvertToF32(f->View(*c), &cv);
  EXPECT_EQ(cv, 0.5f);
  EXPECT_EQ(DTypeName(DType::kBF16), "BF16");
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
}

TEST(SafetensorsTest, WriterRejectsWrongByteCount) {
  SafetensorsWriter w;
  EXPECT_THAT(w.Add("x", DType::kF32, {3}, Floats({1, 2})),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'x'")));
}

TEST(SafetensorsTest, Conversions) {
  EXPECT_EQ(F16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(F16ToF32(0xc000), -2.0f);
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_TRUE(std::isinf(F16ToF32(0x7c00)));
  EXPECT_TRUE(std::isnan(F16ToF32(0x7e00)));
  EXPECT_EQ(F32ToF16(65504.0f), 0x7bff);
  EXPECT_EQ(F32ToF16(1e6f), 0x7c00);
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -24)), 0x0001);
  for (uint32_t h = 0; h < 0x7c00; h += 7) {  // finite halves round-trip exactly
    ASSERT_EQ(F32ToF16(F16ToF32(static_cast<uint16_t>(h))), h) << h;
  }
  // BF16 rounds to nearest even: 1 + 2^-8 is a tie between 1 and 1 + 2^-7.
  EXPECT_EQ(F32ToBF16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(F32ToBF16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(BF16ToF32(F32ToBF16(std::nanf("")))));
}

struct CorruptCase {
  const char* name;
  std::string image;
  const char* want1;
  const char* want2;
};

class CorruptHeaderTest : public ::testing::TestWithParam<CorruptCase> {};

TEST_P(CorruptHeaderTest, NamesTheProblem) {
  const CorruptCase& c = GetParam();
  EXPECT_THAT(Parse(c.image), StatusIs(absl::StatusCode::kInvalidArgument,
                                       AllOf(HasSubstr("mem.safetensors"), HasSubstr(c.want1),
                                             HasSubstr(c.want2))));
}

std::string LenOnly(uint64_t n, size_t total) {
  std::string s(total, ' ');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
  return s;
}

const std::string k16(16, '\x01');

INSTANTIATE_TEST_SUITE_P(
    All, CorruptHeaderTest,
    ::testing::Values(
        CorruptCase{"ShortFile", std::string(5, '\0'), "shorter than the 8-byte", "offset 0"},
        CorruptCase{"LengthPastEnd", LenOnly(1000, 100), "header length 1000", "past the end"},
        CorruptCase{"HugeHeader", LenOnly(200'000'000, 64), "exceeds the limit", "100000000"},
        CorruptCase{"InvalidJson", Image("{\"a\": [1,", ""), "not valid JSON", "at byte"},
        CorruptCase{"NotObject", Image("[1, 2, 3]", ""), "not a JSON object", "offset 8"},
        CorruptCase{"UnknownDtype",
                    Image(R"({"w":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})", k16),
                    "tensor 'w'", "'I64'"},
        CorruptCase{"ShapeSizeMismatch",
                    Image(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", k16),
                    "tensor 'w'", "needs 12 bytes"},
        CorruptCase{"OutOfRange",
                    Image(R"({"w":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", k16),
                    "tensor 'w'", "past the end of the file"},
        CorruptCase{"Overlap",
                    Image(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                          k16),
                    "tensor 'b'", "overlap tensor 'a'"},
        CorruptCase{"Gap",
                    Image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                          k16),
                    "tensor 'b'", "gap of 4"},
        CorruptCase{"TrailingBytes",
                    Image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", k16),
                    "8 trailing bytes", "file offset"},
        CorruptCase{"EndBeforeBegin",
                    Image(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[16,8]}})", k16),
                    "tensor 'a'", "end before begin"},
        CorruptCase{"NegativeDim",
                    Image(R"({"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", k16),
                    "tensor 'a'", "not a valid dimension"},
        CorruptCase{"FloatOffsets",
                    Image(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16.5]}})", k16),
                    "tensor 'a'", "data_offsets"},
        CorruptCase{"MissingShape", Image(R"({"a":{"dtype":"F32","data_offsets":[0,16]}})", k16),
                    "tensor 'a'", "shape"},
        CorruptCase{"OverflowingShape",
                    Image(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],)"
                          R"("data_offsets":[0,16]}})",
                          k16),
                    "tensor 'a'", "too many"},
        CorruptCase{"MetadataNotString", Image(R"({"__metadata__":{"format":1}})", ""),
                    "__metadata__.format", "not a string"}),
    [](const ::testing::TestParamInfo<CorruptCase>& i) { return std::string(i.param.name); });

TEST(SafetensorsTest, OpenMissingFileIsNotFound) {
  EXPECT_THAT(SafetensorsFile::Open("/nonexistent/x.safetensors"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("/nonexistent/x.safetensors")));
}

TEST(SafetensorsTest, TruncatedFileOnDisk) {
  const std::string dir = FreshDir("truncated");
  SafetensorsWriter w;
  ASSERT_OK(w.Add("w", DType::kF32, {4}, Floats({1, 2, 3, 4})));
  ASSERT_OK(w.Write(dir + "/t.safetensors"));
  std::string bytes = ReadAll(dir + "/t.safetensors");
  WriteAll(dir + "/t.safetensors", bytes.substr(0, bytes.size() - 3));
  EXPECT_THAT(SafetensorsFile::Open(dir + "/t.safetensors"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("t.safetensors"), HasSubstr("tensor 'w'"),
                             HasSubstr("past the end of the file"))));
}

// Writes {a,b} into shard 1 and {c} into shard 2 plus an index.
void WriteSharded(const std::string& dir) {
  SafetensorsWriter s1, s2;
  ASSERT_OK(s1.Add("a", DType::kF32, {1}, Floats({1})));
  ASSERT_OK(s1.Add("b", DType::kF32, {2}, Floats({2, 3})));
  ASSERT_OK(s2.Add("c", DType::kF32, {1}, Floats({4})));
  ASSERT_OK(s1.Write(dir + "/m-00001-of-00002.safetensors"));
  ASSERT_OK(s2.Write(dir + "/m-00002-of-00002.safetensors"));
  WriteAll(dir + "/m.safetensors.index.json",
           R"({"metadata":{"total_size":16},"weight_map":{"a":"m-00001-of-00002.safetensors",)"
           R"("b":"m-00001-of-00002.safetensors","c":"m-00002-of-00002.safetensors"}})");
}

TEST(WeightSetTest, ShardedSet) {
  const std::string dir = FreshDir("sharded");
  WriteSharded(dir);
  ASSERT_OK_AND_ASSIGN(auto ws, WeightSet::Open(dir));
  EXPECT_EQ(ws->size(), 3u);
  EXPECT_THAT(ws->Names(), ElementsAre("a", "b", "c"));
  ASSERT_OK_AND_ASSIGN(TensorView c, ws->Get("c"));
  float v = 0;
  ConvertToF32(c, &v);
  EXPECT_EQ(v, 4.0f);
  EXPECT_EQ(ws->files().size(), 2u);
  EXPECT_THAT(ws->Get("zz"), StatusIs(absl::StatusCode::kNotFound, HasSubstr("'zz'")));
}

TEST(WeightSetTest, SingleFile) {
  const std::string dir = FreshDir("single");
  SafetensorsWriter w;
  ASSERT_OK(w.Add("x", DType::kF32, {1}, Floats({7})));
  ASSERT_OK(w.Write(dir + "/diffusion_pytorch_model.safetensors"));
  ASSERT_OK_AND_ASSIGN(auto ws, WeightSet::Open(dir));
  EXPECT_THAT(ws->Names(), ElementsAre("x"));
}

TEST(WeightSetTest, MissingShardIsNamed) {
  const std::string dir = FreshDir("missing_shard");
  WriteSharded(dir);
  std::filesystem::remove(dir + "/m-00002-of-00002.safetensors");
  EXPECT_THAT(WeightSet::Open(dir),
              StatusIs(absl::StatusCode::kNotFound,
                       AllOf(HasSubstr("m-00002-of-00002.safetensors"), HasSubstr("'c'"))));
}

TEST(WeightSetTest, KeyMappedToShardThatLacksIt) {
  const std::string dir = FreshDir("wrong_shard");
  WriteSharded(dir);
  WriteAll(
      dir + "/m.safetensors.index.json",
      R"({"weight_map":{"a":"m-00001-of-00002.safetensors","b":"m-00001-of-00002.safetensors",)"
      R"("c":"m-00001-of-00002.safetensors"}})");
  EXPECT_THAT(WeightSet::Open(dir),
              StatusIs(absl::StatusCode::kNotFound,
                       AllOf(HasSubstr("key 'c'"), HasSubstr("does not contain it"))));
}

TEST(WeightSetTest, BadIndexJson) {
  const std::string dir = FreshDir("bad_index");
  WriteSharded(dir);
  WriteAll(dir + "/m.safetensors.index.json", R"({"weight_map":{"a":1}})");
  EXPECT_THAT(WeightSet::Open(dir),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("weight_map.a")));
  WriteAll(dir + "/m.safetensors.index.json", R"({"weight_map":{"a":"../x.safetensors"}})");
  EXPECT_THAT(WeightSet::Open(dir),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("invalid shard")));
}

TEST(SafetensorsStreamWriterTest, SparseKeepsFullSize) {
  const std::string dir = FreshDir("sparse");
  std::vector<TensorSpec> specs = {{"big", DType::kF32, {1024, 1024}},
                                   {"small", DType::kBF16, {3}}};
  ASSERT_OK_AND_ASSIGN(auto w, SafetensorsStreamWriter::Create(dir + "/s.safetensors", specs, {}));
  EXPECT_EQ(w->data_bytes(), 4u * 1024 * 1024 + 6);
  ASSERT_OK(w->Finish(/*sparse=*/true));
  ASSERT_OK_AND_ASSIGN(auto f, SafetensorsFile::Open(dir + "/s.safetensors"));
  EXPECT_EQ(f->file_size(), f->data_offset() + 4u * 1024 * 1024 + 6);
  EXPECT_EQ(f->Find("small")->begin, 4u * 1024 * 1024);
}

TEST(SafetensorsStreamWriterTest, IncompleteDataIsRejected) {
  const std::string dir = FreshDir("incomplete");
  ASSERT_OK_AND_ASSIGN(auto w, SafetensorsStreamWriter::Create(dir + "/s.safetensors",
                                                               {{"x", DType::kF32, {2}}}, {}));
  ASSERT_OK(w->Append(Floats({1})));
  EXPECT_THAT(w->Append(Floats({2, 3})), StatusIs(absl::StatusCode::kOutOfRange, HasSubstr("8")));
  EXPECT_THAT(w->Finish(), StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("4 of 8")));
  w.reset();
  EXPECT_FALSE(std::filesystem::exists(dir + "/s.safetensors"));  // nothing half-written
}

}  // namespace
}  // namespace zfarm::worker
