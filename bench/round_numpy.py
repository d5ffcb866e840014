#!/usr/bin/env python3
"""One EF21 round on w8a written plainly with NumPy/SciPy sparse matrices.

The comparison point for `cargo bench -p efkit-runtime --bench round`
(crates/efkit-runtime/benches/round.rs): w8a, n = 20 contiguous shards of
floor(N/n) rows (the remainder to the last worker), labels mapped to {-1, +1},
logistic regression with the nonconvex regularizer

    f_i(x) = (1/N_i) sum_j log(1 + exp(-y_j a_j^T x)) + lam sum_k x_k^2 / (1 + x_k^2),  lam = 0.1,

and per worker: the local gradient, Top-1 of (grad f_i(x) - g_i), g_i += c_i;
then the server averages and steps. Timed: one whole round (all 20 workers,
sequential, as a NumPy program would run them in one process) and the 20
gradients alone, interleaved 400 times; min and median are printed.

Usage: python3 bench/round_numpy.py [path/to/w8a.gz]   (default: data/libsvm/w8a.gz)
"""

import gzip
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

LAM = 0.1
N_WORKERS = 20
D = 300


def load_libsvm(path):
    rows, cols, vals, labels = [], [], [], []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            parts = line.split()
            if not parts:
                continue
            labels.append(float(parts[0]))
            for tok in parts[1:]:
                k, v = tok.split(":")
                rows.append(len(labels) - 1)
                cols.append(int(k) - 1)
                vals.append(float(v))
    y = np.array(labels)
    y = np.where(y == y.min(), -1.0, 1.0)
    a = sp.csr_matrix((vals, (rows, cols)), shape=(len(labels), D))
    return a, y


def shards(a, y, n):
    m = a.shape[0] // n
    out = []
    for i in range(n):
        lo = i * m
        hi = a.shape[0] if i == n - 1 else lo + m
        out.append((a[lo:hi], y[lo:hi]))
    return out


def local_grad(a, y, x):
    z = y * (a @ x)
    # d/dz log(1 + exp(-z)) = -1 / (1 + exp(z))
    s = -y / (1.0 + np.exp(z))
    g = (a.T @ s) / a.shape[0]
    return g + LAM * 2.0 * x / (1.0 + x * x) ** 2


def top1(v):
    c = np.zeros_like(v)
    k = np.argmax(np.abs(v))
    c[k] = v[k]
    return c


def main():
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "data" / "libsvm" / "w8a.gz"
    a, y = load_libsvm(path)
    sh = shards(a, y, N_WORKERS)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(D)
    gamma = 0.01
    g_i = [local_grad(ai, yi, x) for ai, yi in sh]  # round 0: dense init
    g = sum(g_i) / N_WORKERS

    def round_():
        nonlocal x, g
        x = x - gamma * g
        acc = np.zeros(D)
        for i, (ai, yi) in enumerate(sh):
            c = top1(local_grad(ai, yi, x) - g_i[i])
            g_i[i] += c
            acc += c
        g = g + acc / N_WORKERS

    def grads_only():
        for ai, yi in sh:
            local_grad(ai, yi, x)

    # interleaved single calls, as the Rust bench's `paired`: the minimum is the
    # least disturbed time on a shared machine, the median the typical one
    round_()
    grads_only()
    t_round, t_grad = [], []
    for _ in range(400):
        t0 = time.perf_counter()
        round_()
        t_round.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        grads_only()
        t_grad.append(time.perf_counter() - t0)

    def stats(v):
        v = sorted(v)
        return v[len(v) // 2], v[0], v[-1]

    r = stats(t_round)
    gr = stats(t_grad)
    import scipy

    print(f"numpy {np.__version__}, scipy {scipy.__version__}")
    print(f"w8a: N = {a.shape[0]}, d = {D}, nnz = {a.nnz}, n = {N_WORKERS}")
    print(f"ef21 round (20 gradients + Top-1): median {r[0] * 1e3:.3f} ms (min {r[1] * 1e3:.3f}, max {r[2] * 1e3:.3f})")
    print(f"20 gradients only:                 median {gr[0] * 1e3:.3f} ms (min {gr[1] * 1e3:.3f}, max {gr[2] * 1e3:.3f})")


if __name__ == "__main__":
    main()
