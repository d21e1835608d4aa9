// Host-side checks of the helpers the CPU and CUDA attention kernels share (attention_tile.h,
// attention_rule.h), built and run by tests/test_attention_tile.py. Prints each failure; exit status 1
// if any.
#include <cmath>
#include <cstdio>
#include <random>

#include "attention/attention_rule.h"
#include "attention/attention_tile.h"

using namespace sparseops::attention;

static int failures = 0;
#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::printf("%s:%d: failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                     \
    }                                                                 \
  } while (0)

// TokenRule::block must agree with TokenRule::visible over the rectangle: 0 when no pair is visible,
// 2 when every pair is (the CUDA kernels then skip the per-element test), else 1.
static void check_block_rule(std::mt19937& gen) {
  std::uniform_int_distribution<int> pos(0, 60), len(1, 20), win(-1, 12), coin(0, 1);
  for (int trial = 0; trial < 20000; ++trial) {
    const TokenRule rule{pos(gen) - 30, coin(gen) == 1, win(gen), win(gen)};
    const int64_t i0 = pos(gen), i1 = i0 + len(gen), j0 = pos(gen), j1 = j0 + len(gen);
    int seen = 0, total = 0;
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = j0; j < j1; ++j, ++total) seen += rule.visible(i, j);
    const int cls = rule.block(i0, i1, j0, j1);
    if (seen == 0) CHECK(cls == 0);
    if (seen == total) CHECK(cls == 2);
    if (seen > 0 && seen < total) CHECK(cls == 1);
    if (cls == 0) CHECK(seen == 0);
  }
}

static void check_mask_reading() {
  CHECK(readable_count(-3, 5) == 0);
  CHECK(readable_count(0, 5) == 0);
  CHECK(readable_count(4, 5) == 4);
  CHECK(readable_count(5, 5) == 5);
  CHECK(readable_count(99, 5) == 5);  // never past the row
  CHECK(!valid_kv_block(-1, 3) && valid_kv_block(0, 3) && valid_kv_block(2, 3) && !valid_kv_block(3, 3));
  CHECK(mask_row(1, 2, 3, /*mask_b=*/2, /*mask_h=*/4, /*nq=*/5) == (1 * 4 + 2) * 5 + 3);
  CHECK(mask_row(1, 2, 3, 1, 4, 5) == 2 * 5 + 3);  // broadcast over B
  CHECK(mask_row(1, 2, 3, 2, 1, 5) == 1 * 5 + 3);  // broadcast over H
  const KeyRange last = kv_block_keys(2, 16, 40), mid = kv_block_keys(1, 16, 40);
  CHECK(last.begin == 32 && last.end == 40);  // ragged last block
  CHECK(mid.begin == 16 && mid.end == 32);
}

// The online softmax over a row in chunks, with the shared helpers, equals the direct softmax.
static void check_online_softmax(std::mt19937& gen) {
  std::normal_distribution<float> nd(0.0f, 3.0f);
  float s[37], v[37];
  for (int j = 0; j < 37; ++j) {
    s[j] = j % 5 == 0 ? -INFINITY : nd(gen);  // some hidden keys
    v[j] = nd(gen);
  }
  float m = -INFINITY, l = 0.0f, acc = 0.0f;
  for (int c0 = 0; c0 < 37; c0 += 8) {
    float mx = m;
    for (int j = c0; j < c0 + 8 && j < 37; ++j) mx = nan_max(mx, s[j]);
    const float alpha = softmax_rescale(m, mx);
    l *= alpha;
    acc *= alpha;
    for (int j = c0; j < c0 + 8 && j < 37; ++j) {
      const float w = softmax_weight(s[j], mx);
      l += w;
      acc += w * v[j];
    }
    m = mx;
  }
  const RowResult res = finish_softmax_row(m, l);
  double mmax = -INFINITY, sum = 0.0, dot = 0.0;
  for (int j = 0; j < 37; ++j) mmax = std::fmax(mmax, s[j]);
  for (int j = 0; j < 37; ++j) {
    sum += std::exp(s[j] - mmax);
    dot += std::exp(s[j] - mmax) * v[j];
  }
  CHECK(std::fabs(acc * res.inv_l - dot / sum) < 1e-4 * (1.0 + std::fabs(dot / sum)));
  CHECK(std::fabs(res.lse - (mmax + std::log(sum))) < 1e-4 * (1.0 + std::fabs(res.lse)));
  for (int j = 0; j < 37; ++j)  // P recomputed from lse (the backward) matches the forward's weights
    CHECK(std::fabs(recomputed_prob(s[j], res.lse) - std::exp(s[j] - mmax) / sum) < 1e-5);
}

// Splitting a row's kept blocks, finishing each split on its own and merging them with the shared rules
// equals the row done in one pass; the splits cover the entries once.
static void check_split_merge(std::mt19937& gen) {
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (int splits = 1; splits <= 7; ++splits) {
    for (int count = 0; count <= 9; ++count) {
      int64_t next = 0;
      for (int s = 0; s < splits; ++s) {
        const EntryRange r = split_entries(count, s, splits);
        CHECK(r.begin == next && r.end >= r.begin);
        next = r.end;
      }
      CHECK(next == count);
    }
  }
  float sc[24], v[24];
  for (int j = 0; j < 24; ++j) {
    sc[j] = j < 8 ? -INFINITY : nd(gen);  // the first split sees nothing
    v[j] = nd(gen);
  }
  float lse[3], o[3];
  for (int s = 0; s < 3; ++s) {
    float m = -INFINITY, l = 0.0f, acc = 0.0f;
    for (int j = 8 * s; j < 8 * s + 8; ++j) m = nan_max(m, sc[j]);
    for (int j = 8 * s; j < 8 * s + 8; ++j) {
      l += softmax_weight(sc[j], m);
      acc += softmax_weight(sc[j], m) * v[j];
    }
    const RowResult res = finish_softmax_row(m, l);
    lse[s] = res.lse;
    o[s] = acc * res.inv_l;
  }
  const float total = merged_lse(lse, 1, 3);
  float row = 0.0f;
  for (int s = 0; s < 3; ++s) row += split_weight(lse[s], total) * o[s];
  double mmax = -INFINITY, sum = 0.0, dot = 0.0;
  for (int j = 0; j < 24; ++j) mmax = std::fmax(mmax, sc[j]);
  for (int j = 0; j < 24; ++j) {
    sum += std::exp(sc[j] - mmax);
    dot += std::exp(sc[j] - mmax) * v[j];
  }
  CHECK(std::fabs(row - dot / sum) < 1e-4 * (1.0 + std::fabs(dot / sum)));
  CHECK(std::fabs(total - (mmax + std::log(sum))) < 1e-4 * (1.0 + std::fabs(total)));
  const float none[2] = {-INFINITY, -INFINITY}, with_nan[2] = {1.0f, NAN};
  CHECK(std::isinf(merged_lse(none, 1, 2)) && merged_lse(none, 1, 2) < 0);  // nothing seen: -inf (zeros)
  CHECK(split_weight(-INFINITY, -INFINITY) == 0.0f && split_weight(-INFINITY, 1.0f) == 0.0f);
  CHECK(std::isnan(merged_lse(with_nan, 1, 2)) && std::isnan(split_weight(1.0f, merged_lse(with_nan, 1, 2))));
}

static void check_edge_cases() {
  const RowResult empty = finish_softmax_row(-INFINITY, 0.0f);  // a row that saw nothing
  CHECK(empty.inv_l == 0.0f && std::isinf(empty.lse) && empty.lse < 0);
  CHECK(softmax_rescale(-INFINITY, -INFINITY) == 1.0f);
  CHECK(softmax_rescale(-INFINITY, 2.0f) == 0.0f);
  CHECK(softmax_weight(-INFINITY, 1.0f) == 0.0f);
  CHECK(softmax_weight(3.0f, -INFINITY) == 0.0f);
  CHECK(recomputed_prob(1.0f, -INFINITY) == 0.0f);
  CHECK(std::isnan(nan_max(NAN, 1.0f)) && std::isnan(nan_max(1.0f, NAN)));  // NaN is kept
  CHECK(nan_max(-INFINITY, 2.0f) == 2.0f);
  CHECK(std::isnan(softmax_rescale(NAN, NAN)));
}

int main() {
  std::mt19937 gen(0);
  check_block_rule(gen);
  check_mask_reading();
  for (int t = 0; t < 200; ++t) check_online_softmax(gen);
  for (int t = 0; t < 50; ++t) check_split_merge(gen);
  check_edge_cases();
  if (failures == 0) std::printf("all attention tile checks passed\n");
  return failures == 0 ? 0 : 1;
}
