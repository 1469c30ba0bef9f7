// Grouped matmul kernels: up to kStreamRows rows per matrix stream the weights at memory bandwidth (W rows split
// over the threads, partial sums added in a fixed order); more rows run register-tiled on packed strips of W.
#include "grouped_matmul.h"

#include <algorithm>
#include <memory>
#include <type_traits>
#include <vector>

namespace omni {
namespace {

constexpr long kStreamRows = 8;  // groups of at most this many rows stream W (bandwidth-bound): W's rows are split
                                 // among the threads and each piece is read row by row, contiguously
constexpr long kRowsPerSplit = 256;  // rows of W per work item of such a group
constexpr long kSplitCols = 8192;
constexpr long kWholeMatrixGroups = 8;
constexpr long kTileSplits = 2;  // pieces of W's rows per matrix of a several-row group when the groups are few:
                                  // long pieces keep the prefetch of their next rows going (8 pieces: 0.84-0.96x)
constexpr long kTileCols = 2048;  // and columns per such piece: its next kDepth rows (512 KB) prefetched into L2

typedef float v16 __attribute__((vector_size(64), aligned(4)));  // 16 floats, unaligned loads allowed

constexpr int kStreams = 4;  // W rows [k0, k1) are read as this many contiguous streams at once

// acc[j][0:w] += sum_{k in [k0,k1)} x[j][k] * W[k][n0:n0+w] for RB rows, four rows of W per pass: each vector
// of W is loaded once and used for the RB rows. The four rows of a pass come from kStreams equal runs of the
// range read side by side (then the rows left over one at a time): the hardware prefetcher follows each run, and
// several runs keep more of memory's lines in flight than one (a plain read: one core 11.9 -> 15.6 GB/s, two
// 24.5 -> 30.4 GB/s with 4 runs each; the 1-token MoE call from memory 1.045x, 1-8 row matmuls 1.02-1.14x).
template <int RB>
void accumulate(const float* const* x, const float* W, long N, long k0, long k1, long n0, long w, float* const* acc) {
  static_assert(4 % kStreams == 0, "a pass takes the same number of rows from every stream");
  constexpr int per = 4 / kStreams;  // consecutive rows a pass takes from each stream
  const long wv = w / 16 * 16;
  const long passes = (k1 - k0) / 4, run = passes * per;  // rows per stream
  for (long i = 0; i < passes; ++i) {
    long kr[4];
    for (int s = 0; s < kStreams; ++s)
      for (int t = 0; t < per; ++t) kr[s * per + t] = k0 + s * run + i * per + t;
    const float* w0 = W + kr[0] * N + n0;
    const float* w1 = W + kr[1] * N + n0;
    const float* w2 = W + kr[2] * N + n0;
    const float* w3 = W + kr[3] * N + n0;
    float a0[RB], a1[RB], a2[RB], a3[RB];
    for (int j = 0; j < RB; ++j) a0[j] = x[j][kr[0]], a1[j] = x[j][kr[1]], a2[j] = x[j][kr[2]], a3[j] = x[j][kr[3]];
    for (long n = 0; n < wv; n += 16) {
      const v16 v0 = *(const v16*)(w0 + n), v1 = *(const v16*)(w1 + n);
      const v16 v2 = *(const v16*)(w2 + n), v3 = *(const v16*)(w3 + n);
      for (int j = 0; j < RB; ++j) {
        v16* o = (v16*)(acc[j] + n);
        *o += a0[j] * v0 + a1[j] * v1 + a2[j] * v2 + a3[j] * v3;
      }
    }
    for (long n = wv; n < w; ++n)
      for (int j = 0; j < RB; ++j) acc[j][n] += a0[j] * w0[n] + a1[j] * w1[n] + a2[j] * w2[n] + a3[j] * w3[n];
  }
  for (long k = k0 + 4 * passes; k < k1; ++k) {
    const float* w0 = W + k * N + n0;
    for (int j = 0; j < RB; ++j) {
      const float a0 = x[j][k];
      float* __restrict__ o = acc[j];
      for (long n = 0; n < w; ++n) o[n] += a0 * w0[n];
    }
  }
}

// f(std::integral_constant<int, rb>{}) for 1 <= rb <= R: a row count chosen at run time as a template argument
template <int R, typename F>
void with_rows(int rb, const F& f) {
  if constexpr (R > 1)
    if (rb < R) return with_rows<R - 1>(rb, f);
  f(std::integral_constant<int, R>{});
}

void accumulate_rows(int rb, const float* const* x, const float* W, long N, long k0, long k1, long n0, long w,
                     float* const* acc) {
  with_rows<kStreamRows>(rb, [&](auto rows) { accumulate<rows()>(x, W, N, k0, k1, n0, w, acc); });
}

constexpr int kVecs = 4;             // v16 per row of a register tile
constexpr long kTile = 16 * kVecs;   // columns per register tile
constexpr long kDepth = 64;  // rows of W per packed strip: kDepth x kTile floats stay in L1
constexpr long kLineFloats = 16;  // floats per cache line (what one prefetch fetches)
constexpr int kBlock = 6;            // rows per register tile: 6 x 4 accumulators + 4 loads fit 32 vector registers

// out[j][col:col+kTile] = sum_k xp[k*RB + j] * wp[k][0:kTile]: RB x kTile accumulators held in registers,
// each W vector loaded once for the RB rows (xp: the rows packed k-major; wp: a kTile-column strip of W packed
// contiguously, so the passes over it stay in cache and cross no pages)
template <int RB>
void tile_kernel(const float* __restrict__ xp, const float* __restrict__ wp, long K, long col, float* const* out,
                 bool first, const char* prefetch, long lines) {
  v16 acc[RB][kVecs];
  for (int j = 0; j < RB; ++j)
    for (int v = 0; v < kVecs; ++v) acc[j][v] = (v16){};
  const float* w = wp;
  for (long k = 0; k < K; ++k, w += kTile) {
    if (k < lines) __builtin_prefetch(prefetch + k * 64, 0, 1);
    v16 wv[kVecs];
    for (int v = 0; v < kVecs; ++v) wv[v] = *(const v16*)(w + 16 * v);
    const float* xk = xp + k * RB;
    for (int j = 0; j < RB; ++j)
      for (int v = 0; v < kVecs; ++v) acc[j][v] += wv[v] * xk[j];
  }
  // each block of W rows sums in fresh accumulators, then adds to the output: float32 error like a blocked GEMM's
  for (int j = 0; j < RB; ++j)
    for (int v = 0; v < kVecs; ++v) {
      v16* o = (v16*)(out[j] + col + 16 * v);
      *o = first ? acc[j][v] : *o + acc[j][v];
    }
}

void tile_rows(int rb, const float* xp, const float* wp, long K, long col, float* const* out, bool first,
               const char* prefetch, long lines) {
  with_rows<kBlock>(rb, [&](auto rows) { tile_kernel<rows()>(xp, wp, K, col, out, first, prefetch, lines); });
}

// rows in the next register tile when `left` rows of a group remain
// (a lone row in a tile would run at half speed: each accumulator's chain of adds then bounds the loop, so 7-11
// rows are cut into two tiles of 3-6)
int block_rows(long left) { return left <= kBlock ? left : left < 2 * kBlock ? (left + 1) / 2 : kBlock; }

// Work for one thread: a group's column range [n0, n0+w) over W rows [k0, k1). split >= 0: a few-row group
// whose W rows were cut into pieces; this item writes piece `split` of its partial sums.
struct Item { long group; long n0, w, k0, k1; long split; bool tiled; };

}  // namespace

std::vector<Group> make_groups(const Pairs& sorted) {
  std::vector<Group> groups;
  for (size_t i = 0; i < sorted.size();) {
    size_t j = i;
    while (j < sorted.size() && sorted[j].first == sorted[i].first) ++j;
    groups.push_back({sorted[i].first, (long)i, (long)(j - i)});
    i = j;
  }
  return groups;
}

void grouped_matmul(xla::ffi::ThreadPool& pool, const Pairs& sorted, const std::vector<Group>& groups,
                    const float* in, long in_div, long in_stride, const float* W, long K, long N, float* out,
                    long out_stride) {
  auto in_row = [&](long i) { return in + sorted[i].second / in_div * in_stride; };
  auto out_row = [&](long i) { return out + sorted[i].second * out_stride; };
  std::vector<Item> items;
  std::vector<long> partial_row(sorted.size(), -1);  // row of the partial sums, for the split groups' entries
  long partial_rows = 0, splits = 0;
  // several-row groups: with enough of them to share, each is one item that streams its matrix's rows whole
  // (the hardware prefetcher follows them); with a few, each matrix's rows are split among the threads in
  // pieces read whole row by whole row (kSplitCols columns at most), their partial sums added in order
  long several_groups = 0;
  for (const Group& gr : groups) several_groups += gr.count > kStreamRows;
  const bool whole_matrices = several_groups >= kWholeMatrixGroups;
  const long tile_split = (K + kTileSplits * kDepth - 1) / (kTileSplits * kDepth) * kDepth;  // rows per piece
  for (long g = 0; g < (long)groups.size(); ++g) {
    const Group& gr = groups[g];
    const bool tiled = gr.count > kStreamRows;
    if (tiled && whole_matrices) {
      items.push_back({g, 0, N, 0, K, -1, true});
      continue;
    }
    const long rows_per_split = tiled ? tile_split : kRowsPerSplit;
    const long cols_per_item = tiled ? kTileCols : kSplitCols;
    long s = 0;
    for (long k0 = 0; k0 < K; k0 += rows_per_split, ++s)
      for (long n0 = 0; n0 < N; n0 += cols_per_item)
        items.push_back({g, n0, std::min(cols_per_item, N - n0), k0, std::min(K, k0 + rows_per_split), s, tiled});
    splits = std::max(splits, s);
    for (long r = 0; r < gr.count; ++r) partial_row[gr.first + r] = partial_rows++;
  }
  // partial sums of the split groups: [split][partial row][N], zero where a split has no item
  std::vector<float> partial((size_t)splits * partial_rows * N, 0.f);
  // several-row groups' rows, packed k-major per register-tile block of rows (xp[k*rb + j])
  std::unique_ptr<float[]> xpack(new float[sorted.size() * K]);
  parallel_for(pool, (long)groups.size(), [&](long g) {
    const Group& gr = groups[g];
    if (gr.count <= kStreamRows) return;
    for (long r = gr.first; r < gr.first + gr.count;) {
      const int rb = block_rows(gr.first + gr.count - r);
      float* xp = xpack.get() + r * K;
      for (int b = 0; b < rb; ++b) {
        const float* row = in_row(r + b);
        for (long k = 0; k < K; ++k) xp[k * rb + b] = row[k];
      }
      r += rb;
    }
  });
  std::atomic<long> started{-1};  // the highest item index begun: the items are claimed in order
  parallel_for(pool, (long)items.size(), [&](long it) {
    const Item& item = items[it];
    const Group& gr = groups[item.group];
    const float* Wx = W + gr.expert * K * N;
    // where an item's sums go: the output rows, or its split's partial sums
    auto dest_row = [&](long r) {
      return item.split < 0 ? out_row(r)
                            : partial.data() + ((size_t)item.split * partial_rows + partial_row[r]) * N;
    };
    if (item.tiled) {  // several rows: kDepth x kTile blocks of W packed once, each swept by every row block
      // the item's full tiles, kDepth rows of W at a time: each kTile-column strip of those rows packed into an
      // L1-sized buffer just before every row block sweeps it, while the tile calls prefetch the next kDepth rows
      // of the item into the cache (one line per kernel step), so the memory reads overlap the arithmetic
      alignas(64) thread_local float wpack[kDepth * kTile];
      const long full = item.w / kTile * kTile;
      long row_blocks = 0;
      for (long r = gr.first; r < gr.first + gr.count; r += block_rows(gr.first + gr.count - r)) ++row_blocks;
      for (long prev = started.load(); prev < it && !started.compare_exchange_weak(prev, it);) {
      }
      for (long k0 = item.k0; full > 0 && k0 < item.k1; k0 += kDepth) {
        const long depth = std::min(kDepth, item.k1 - k0);
        // what to prefetch: the item's next kDepth rows, or after its last the first rows of the item likely
        // claimed next (one past the highest started)
        const float* pf_w = Wx + (k0 + kDepth) * N + item.n0;
        long pf_rows = std::max(0L, std::min(kDepth, item.k1 - k0 - kDepth)), pf_cols = item.w;
        if (pf_rows == 0) {
          const long next = started.load(std::memory_order_relaxed) + 1;
          if (next < (long)items.size() && items[next].tiled) {
            const Item& ni = items[next];
            pf_w = W + groups[ni.group].expert * K * N + ni.k0 * N + ni.n0;
            pf_rows = std::min(kDepth, ni.k1 - ni.k0), pf_cols = ni.w;
          }
        }
        const long row_lines = (pf_cols + kLineFloats - 1) / kLineFloats;
        const long lines = pf_rows * row_lines, calls = full / kTile * row_blocks;
        const long per_call = std::min(depth, (lines + calls - 1) / calls);
        long issued = 0;
        for (long c = 0; c < full; c += kTile) {
          const float* src = Wx + k0 * N + item.n0 + c;
          for (long k = 0; k < depth; ++k)
            for (int v = 0; v < kVecs; ++v) *(v16*)(wpack + k * kTile + 16 * v) = *(const v16*)(src + k * N + 16 * v);
          for (long r = gr.first; r < gr.first + gr.count;) {
            const int rb = block_rows(gr.first + gr.count - r);
            float* os[kBlock];
            for (int j = 0; j < rb; ++j) os[j] = dest_row(r + j);
            // this call's share of the next rows' lines (within one row where the item has part of W's columns)
            long n = std::max(0L, std::min(per_call, lines - issued));
            const long row = issued / row_lines, line = issued % row_lines;
            if (pf_cols < N) n = std::min(n, row_lines - line);
            const char* pf = (const char*)(pf_w + row * N + line * kLineFloats);
            tile_rows(rb, xpack.get() + r * K + k0 * rb, wpack, depth, item.n0 + c, os, k0 == item.k0, pf, n);
            issued += n;
            r += rb;
          }
        }
      }
      if (full < item.w) {  // the last few columns (widths that are not a multiple of kTile)
        for (long r = gr.first; r < gr.first + gr.count;) {
          const int rb = block_rows(gr.first + gr.count - r);
          const float* xs[kBlock];
          float* acc[kBlock];
          for (int j = 0; j < rb; ++j) {
            xs[j] = in_row(r + j);
            acc[j] = dest_row(r + j) + item.n0 + full;
            std::fill(acc[j], acc[j] + item.w - full, 0.f);
          }
          accumulate_rows(rb, xs, Wx, N, item.k0, item.k1, item.n0 + full, item.w - full, acc);
          r += rb;
        }
      }
      return;
    }
    const float* xs[kStreamRows];
    float* acc[kStreamRows];
    for (long j = 0; j < gr.count; ++j) {
      xs[j] = in_row(gr.first + j);
      acc[j] = partial.data() + ((size_t)item.split * partial_rows + partial_row[gr.first + j]) * N + item.n0;
    }
    accumulate_rows((int)gr.count, xs, Wx, N, item.k0, item.k1, item.n0, item.w, acc);
  });
  // the split groups' outputs: their partial sums added in split order
  if (splits == 0) return;
  parallel_for(pool, (long)sorted.size(), [&](long i) {
    if (partial_row[i] < 0) return;
    float* o = out_row(i);
    std::fill(o, o + N, 0.f);
    for (long q = 0; q < splits; ++q) {
      const float* pr = partial.data() + ((size_t)q * partial_rows + partial_row[i]) * N;
      for (long n = 0; n < N; ++n) o[n] += pr[n];
    }
  });
}

long stream_rows() { return kStreamRows; }

void stream_matmuls(xla::ffi::ThreadPool& pool, const float* in, long M, long K, const std::vector<Matrix>& mats) {
  // pieces as in grouped_matmul's streaming path: kRowsPerSplit rows of W by at most kSplitCols columns, the
  // partial sums of piece `split` in their own buffer, added in split order at the end
  struct Piece { long mat, k0, k1, n0, w, split; };
  const long splits = (K + kRowsPerSplit - 1) / kRowsPerSplit;
  std::vector<Piece> pieces;
  std::vector<size_t> offset(mats.size() + 1, 0);  // each matrix's partial sums: [split][M][n]
  for (long i = 0; i < (long)mats.size(); ++i) {
    for (long s = 0; s < splits; ++s)
      for (long n0 = 0; n0 < mats[i].n; n0 += kSplitCols)
        pieces.push_back({i, s * kRowsPerSplit, std::min(K, (s + 1) * kRowsPerSplit), n0,
                          std::min(kSplitCols, mats[i].n - n0), s});
    offset[i + 1] = offset[i] + (size_t)splits * M * mats[i].n;
  }
  std::vector<float> partial(offset.back(), 0.f);
  const float* xs[kStreamRows];
  for (long j = 0; j < M; ++j) xs[j] = in + j * K;
  parallel_for(pool, (long)pieces.size(), [&](long p) {
    const Piece& pc = pieces[p];
    const Matrix& m = mats[pc.mat];
    float* acc[kStreamRows];
    for (long j = 0; j < M; ++j) acc[j] = partial.data() + offset[pc.mat] + ((size_t)pc.split * M + j) * m.n + pc.n0;
    accumulate_rows((int)M, xs, m.w, m.n, pc.k0, pc.k1, pc.n0, pc.w, acc);
  });
  const long outputs = (long)mats.size() * M;  // one (matrix, row) per item
  parallel_for(pool, outputs, [&](long r) {
    const long i = r / M, j = r % M;
    const long n = mats[i].n;
    float* o = mats[i].out + j * n;
    std::fill(o, o + n, 0.f);
    for (long q = 0; q < splits; ++q) {
      const float* pr = partial.data() + offset[i] + ((size_t)q * M + j) * n;
      for (long c = 0; c < n; ++c) o[c] += pr[c];
    }
  });
}

}  // namespace omni
