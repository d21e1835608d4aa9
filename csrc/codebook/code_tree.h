#pragma once
// A k-d tree over the codes of a low-dimensional codebook, for codebook_lookup's pruned CPU search
// (lookup_cpu.cpp). In a few dimensions the nearest code of a query lies in a handful of the tree's
// leaves, and a leaf whose box is farther than a query's current best can be skipped outright (K = 262144
// Gaussian codes, D = 8: about 1% of the codes are within reach of a query, a few % of a block of 8
// nearby queries). From about 12 dimensions on nearly every leaf is within reach and the brute-force scan
// is faster.
//
// Layout: the codes are reordered so that every leaf is a run of `leaf` consecutive positions starting at
// a multiple of `leaf` (only the last leaf may be shorter); order[p] is the code at position p. Nodes are
// in heap numbering (node n's children are 2n + 1 and 2n + 2) and each covers the positions
// [begin, end); a node of more than `leaf` positions is split at begin + round_up(size / 2, leaf), on its
// widest dimension, with the codes below the split value on the left. Boxes are tight: the exact
// per-dimension minimum and maximum of the node's codes. No torch headers.
#include <cstdint>
#include <vector>

namespace sparseops::codebook {

struct CodeTree {
  int64_t K = 0, D = 0, leaf = 0;
  std::vector<int32_t> order;    // [K]: the code at each position
  std::vector<float> points;     // [K][D]: the codes' fp32 values in position order
  std::vector<int64_t> begin, end;  // per node slot; end == begin for an unused slot
  std::vector<int32_t> split_dim;   // per internal node
  std::vector<float> split_value;   // per internal node: codes at or after the split position are >= it
  std::vector<float> lo, hi;        // [nodes][D]: the node's box

  bool is_leaf(int64_t n) const { return end[n] - begin[n] <= leaf; }
  // The first position of the leaf that z (D floats) descends to: a starting point for its search.
  int64_t leaf_of(const float* z) const;
};

// Builds the tree over K codes of D dims (fp32, row-major) with leaves of `leaf` codes. Extra memory:
// the reordered fp32 copy of the codes (K x D), the order (K int32) and up to ~4K / leaf node slots of
// 2 D floats each; while building, a second copy of both (each level moves the codes from one to the
// other) and 16 bytes per code of the nodes being split (sort keys and scratch). Parallel over the nodes
// of each level.
CodeTree build_code_tree(const float* codes, int64_t K, int64_t D, int64_t leaf);

}  // namespace sparseops::codebook
