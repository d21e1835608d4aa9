// The k-d tree of codebook_lookup's pruned CPU search: see code_tree.h.
#include "codebook/code_tree.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <numeric>

namespace sparseops::codebook {
namespace {

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Where a node of `size` positions splits (relative to its begin): leaves stay aligned to `leaf`.
int64_t split_point(int64_t size, int64_t leaf) { return round_up(size / 2, leaf); }

// The highest slot that the subtree of node n (size positions) uses.
int64_t last_slot(int64_t n, int64_t size, int64_t leaf) {
  if (size <= leaf) return n;
  const int64_t h = split_point(size, leaf);
  return std::max(last_slot(2 * n + 1, h, leaf), last_slot(2 * n + 2, size - h, leaf));
}

// A float's bits as an unsigned integer in the same order (finite values and infinities).
uint32_t sortable_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return (u >> 31) != 0 ? ~u : u | 0x80000000u;
}

float from_sortable_bits(uint32_t u) {
  u = (u >> 31) != 0 ? u & 0x7fffffffu : ~u;
  float v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

// The codes' values and order as they stand before or after a level's splits.
struct Buffer {
  float* points;
  int32_t* order;
};

// Grows the box [lo, hi] (D floats each) to hold x; `first`: the box is x alone.
void extend_box(float* lo, float* hi, const float* x, int64_t D, bool first) {
  for (int64_t d = 0; d < D; ++d) {
    lo[d] = first ? x[d] : std::min(lo[d], x[d]);
    hi[d] = first ? x[d] : std::max(hi[d], x[d]);
  }
}

// Reorders keys so that its h smallest come first and keys[h] is the next (std::nth_element's contract).
// Large arrays: two pivots bracketing rank h, taken from a sorted sample of 256 keys, split the keys into
// three runs in one branch-free pass (std::nth_element's partitions mispredict about every other key), and
// only the middle run, which holds rank h unless the sample misled (then std::nth_element on all), is
// selected in. `tmp`: scratch of keys.size().
void select_rank(std::vector<uint64_t>& keys, int64_t h, std::vector<uint64_t>& tmp) {
  const int64_t n = static_cast<int64_t>(keys.size());
  constexpr int64_t kSample = 256, kSlack = 12;
  if (n < 4 * kSample) {
    std::nth_element(keys.begin(), keys.begin() + h, keys.end());
    return;
  }
  uint64_t sample[kSample];
  for (int64_t j = 0; j < kSample; ++j) sample[j] = keys[(2 * j + 1) * n / (2 * kSample)];
  std::sort(sample, sample + kSample);
  const int64_t at = h * kSample / n;
  const uint64_t lo = at - kSlack < 0 ? 0 : sample[at - kSlack];
  const uint64_t hi = at + kSlack >= kSample ? ~uint64_t{0} : sample[at + kSlack];
  // Below lo from the front of tmp, above hi from its back, the rest into keys from the front.
  int64_t below = 0, above = 0, mid = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t k = keys[i];
    const bool is_below = k < lo, is_above = k > hi;
    tmp[below] = k;
    tmp[n - 1 - above] = k;
    keys[mid] = k;  // mid <= i: never ahead of the reads
    below += is_below;
    above += is_above;
    mid += !is_below && !is_above;
  }
  if (h < below || h >= below + mid) {  // the sample misled: select in all of them
    std::copy(tmp.begin(), tmp.begin() + below, keys.begin() + mid);
    std::copy(tmp.end() - above, tmp.end(), keys.begin() + mid + below);
    std::nth_element(keys.begin(), keys.begin() + h, keys.end());
    return;
  }
  std::nth_element(keys.begin(), keys.begin() + (h - below), keys.begin() + mid);
  std::copy_backward(keys.begin(), keys.begin() + mid, keys.begin() + below + mid);
  std::copy(tmp.begin(), tmp.begin() + below, keys.begin());
  std::copy(tmp.end() - above, tmp.end(), keys.begin() + below + mid);
}

// Node n's positions, whose box is set, from src to dst: a leaf as it is; otherwise reordered so that
// the split_point() smallest values of its widest dimension come first, setting the children's boxes.
void split_node(CodeTree& t, int64_t n, Buffer src, Buffer dst, std::vector<uint64_t>& keys,
                std::vector<uint64_t>& tmp) {
  const int64_t b = t.begin[n], e = t.end[n], D = t.D;
  if (e - b <= t.leaf) {
    std::copy(src.points + b * D, src.points + e * D, dst.points + b * D);
    std::copy(src.order + b, src.order + e, dst.order + b);
    return;
  }
  const float* lo = t.lo.data() + n * D;
  const float* hi = t.hi.data() + n * D;
  int64_t dim = 0;
  for (int64_t d = 1; d < D; ++d)
    if (hi[d] - lo[d] > hi[dim] - lo[dim]) dim = d;
  const int64_t size = e - b, h = split_point(size, t.leaf);
  // (sortable value << 32) | offset in the node: ties keep their position order
  keys.resize(size);
  for (int64_t i = 0; i < size; ++i)
    keys[i] = (static_cast<uint64_t>(sortable_bits(src.points[(b + i) * D + dim])) << 32) | static_cast<uint64_t>(i);
  tmp.resize(size);
  select_rank(keys, h, tmp);
  float* child_lo[2] = {t.lo.data() + (2 * n + 1) * D, t.lo.data() + (2 * n + 2) * D};
  float* child_hi[2] = {t.hi.data() + (2 * n + 1) * D, t.hi.data() + (2 * n + 2) * D};
  for (int64_t i = 0; i < size; ++i) {
    const int64_t from = b + static_cast<int64_t>(keys[i] & 0xffffffffu);
    const float* x = src.points + from * D;
    std::copy_n(x, D, dst.points + (b + i) * D);
    dst.order[b + i] = src.order[from];
    const int side = i < h ? 0 : 1;
    extend_box(child_lo[side], child_hi[side], x, D, i == 0 || i == h);
  }
  t.split_dim[n] = static_cast<int32_t>(dim);
  t.split_value[n] = from_sortable_bits(static_cast<uint32_t>(keys[h] >> 32));
}

}  // namespace

int64_t CodeTree::leaf_of(const float* z) const {
  int64_t n = 0;
  while (!is_leaf(n)) n = z[split_dim[n]] < split_value[n] ? 2 * n + 1 : 2 * n + 2;
  return begin[n];
}

CodeTree build_code_tree(const float* codes, int64_t K, int64_t D, int64_t leaf) {
  CodeTree t;
  t.K = K;
  t.D = D;
  t.leaf = leaf;
  const int64_t slots = last_slot(0, K, leaf) + 1;
  t.begin.assign(slots, 0);
  t.end.assign(slots, 0);
  t.split_dim.assign(slots, -1);
  t.split_value.assign(slots, 0.0f);
  t.lo.assign(slots * D, 0.0f);
  t.hi.assign(slots * D, 0.0f);
  // Two buffers, ping-pong: each level reads one and writes the other, leaves included, so the last
  // level's buffer holds every code; the tree keeps that one.
  t.order.resize(K);
  std::iota(t.order.begin(), t.order.end(), 0);
  t.points.assign(codes, codes + K * D);
  std::vector<float> points2(static_cast<size_t>(K * D));
  std::vector<int32_t> order2(static_cast<size_t>(K));
  Buffer cur{t.points.data(), t.order.data()}, other{points2.data(), order2.data()};
  t.end[0] = K;
  for (int64_t p = 0; p < K; ++p) extend_box(t.lo.data(), t.hi.data(), codes + p * D, D, p == 0);
  // Level by level: the nodes of one level cover disjoint positions, so they split in parallel.
  std::vector<int64_t> level{0};
  while (std::any_of(level.begin(), level.end(), [&](int64_t n) { return !t.is_leaf(n); })) {
    at::parallel_for(0, static_cast<int64_t>(level.size()), 1, [&](int64_t a, int64_t z) {
      std::vector<uint64_t> keys, tmp;
      for (int64_t i = a; i < z; ++i) split_node(t, level[i], cur, other, keys, tmp);
    });
    std::swap(cur, other);
    std::vector<int64_t> next;
    for (const int64_t n : level) {
      if (t.is_leaf(n)) {
        next.push_back(n);  // carried to the next buffer with the others
        continue;
      }
      const int64_t h = t.begin[n] + split_point(t.end[n] - t.begin[n], leaf);
      t.begin[2 * n + 1] = t.begin[n];
      t.end[2 * n + 1] = h;
      t.begin[2 * n + 2] = h;
      t.end[2 * n + 2] = t.end[n];
      next.push_back(2 * n + 1);
      next.push_back(2 * n + 2);
    }
    level.swap(next);
  }
  if (cur.points != t.points.data()) {
    t.points.swap(points2);
    t.order.swap(order2);
  }
  return t;
}

}  // namespace sparseops::codebook
