// Row groups multiplied by the weight matrix their group names, read in place (no copies of the weights).
#pragma once
#include <utility>
#include <vector>

namespace omni {

// (matrix index, slot) pairs sorted by matrix: slot s reads input row s / in_div and writes output row s
using Pairs = std::vector<std::pair<long, long>>;

// A run of `sorted` pairs with one matrix.
struct Group { long expert; long first, count; };

std::vector<Group> make_groups(const Pairs& sorted);

// out[slot] = in[slot / in_div] @ W[matrix of slot] for every (matrix, slot) in `sorted`; W holds the matrices
// [num_matrices, K, N] row-major. Both cores share the work; results do not depend on the thread count.
void grouped_matmul(const Pairs& sorted, const std::vector<Group>& groups, const float* in, long in_div,
                    long in_stride, const float* W, long K, long N, float* out, long out_stride);

}  // namespace omni
