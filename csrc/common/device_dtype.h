#pragma once
// The dtype tag that crosses from torch glue (.cpp) into launchers (.cu), which see no torch types.
namespace sparseops {
enum class DType { kFloat32, kFloat16, kBFloat16 };
}
