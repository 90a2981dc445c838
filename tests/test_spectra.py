"""Spectra: Gram fast path equals SVD, batching equals one-by-one, devices and inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alphalora.errors import AlphaLoRAError
from alphalora.spectral.fits import fit_clauset, fit_hill_peak
from alphalora.spectral.spectra import eigenvalues, eigenvalues_batched, resolve_device

SHAPES = [(64, 32), (32, 64), (96, 96), (200, 48), (48, 200)]


def _matrix(shape: tuple[int, int], seed: int, heavy: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_t(2.5, shape) if heavy else rng.standard_normal(shape)


@pytest.mark.parametrize("shape", SHAPES)
def test_eigenvalues_are_squared_singular_values(shape):
    w = _matrix(shape, 1)
    lam = eigenvalues(w)
    ref = np.sort(np.linalg.svd(w, compute_uv=False) ** 2)
    assert isinstance(lam, np.ndarray) and lam.dtype == np.float64
    assert lam.shape == (min(shape),)
    assert np.all(np.diff(lam) >= 0) and np.all(lam >= 0)
    np.testing.assert_allclose(lam, ref, rtol=1e-10, atol=1e-12 * ref[-1])


@pytest.mark.parametrize("heavy", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_gram_and_svd_agree(shape, heavy):
    w = _matrix(shape, 2, heavy)
    gram = eigenvalues(w, method="gram")
    svd = eigenvalues(w, method="svd")
    np.testing.assert_allclose(gram, svd, rtol=1e-9, atol=1e-12 * svd[-1])
    assert np.array_equal(eigenvalues(w, method="auto"), gram)
    a_gram, a_svd = fit_clauset(gram), fit_clauset(svd)
    assert a_gram.alpha == pytest.approx(a_svd.alpha, rel=1e-8)
    assert fit_hill_peak(gram).alpha == pytest.approx(fit_hill_peak(svd).alpha, rel=1e-8)


@pytest.mark.parametrize("shape", [(80, 30), (30, 80)])
def test_tall_and_wide_give_the_same_spectrum(shape):
    w = _matrix(shape, 3)
    np.testing.assert_allclose(eigenvalues(w), eigenvalues(w.T), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(
        eigenvalues(w, method="svd"), eigenvalues(w.T, method="svd"), rtol=1e-11, atol=1e-12
    )


def test_batched_equals_one_by_one_in_input_order():
    mats = [_matrix(s, 10 + i, heavy=i % 2 == 1) for i, s in enumerate(SHAPES * 3)]
    mats.append(torch.from_numpy(_matrix((64, 32), 99)).float())
    for method in ("gram", "svd"):
        batched = eigenvalues_batched(mats, method=method)
        assert len(batched) == len(mats)
        for w, lam in zip(mats, batched, strict=True):
            single = eigenvalues(w, method=method)
            assert lam.shape == single.shape
            np.testing.assert_allclose(lam, single, rtol=1e-12, atol=1e-13 * single[-1])
    assert eigenvalues_batched([]) == []


def test_batched_chunks_large_groups(monkeypatch):
    import alphalora.spectral.spectra as spectra

    monkeypatch.setattr(spectra, "_BATCH_BYTES", 1)  # forces one matrix per batch
    mats = [_matrix((40, 20), s) for s in range(5)]
    for w, lam in zip(mats, eigenvalues_batched(mats), strict=True):
        np.testing.assert_allclose(lam, eigenvalues(w), rtol=1e-12)


def test_float32_input_and_float32_compute():
    w64 = _matrix((120, 60), 4)
    w32 = w64.astype(np.float32)
    # float32 input, float64 compute: exactly the spectrum of the float32 values
    np.testing.assert_array_equal(eigenvalues(w32), eigenvalues(w32.astype(np.float64)))
    np.testing.assert_array_equal(eigenvalues(torch.from_numpy(w32)), eigenvalues(w32))
    # float32 compute: eigenvalues within ~1e-5, α within 1e-4
    lam32 = eigenvalues(w32, dtype=torch.float32)
    ref = eigenvalues(w32)
    assert lam32.dtype == np.float64
    np.testing.assert_allclose(lam32, ref, rtol=1e-4, atol=1e-6 * ref[-1])
    assert fit_clauset(lam32).alpha == pytest.approx(fit_clauset(ref).alpha, rel=1e-4)
    bf16 = torch.from_numpy(w32).to(torch.bfloat16)
    assert eigenvalues(bf16).shape == (60,)


def test_rank_deficient_matrix_has_nonnegative_zeros():
    rng = np.random.default_rng(5)
    w = np.outer(rng.standard_normal(50), rng.standard_normal(30))  # rank 1
    for method in ("gram", "svd"):
        lam = eigenvalues(w, method=method)
        assert np.all(lam >= 0.0)
        assert lam[-1] == pytest.approx(np.linalg.norm(w, 2) ** 2, rel=1e-10)
        assert np.all(lam[:-1] <= 1e-10 * lam[-1])
        fit = fit_clauset(lam)  # zeros must not crash the fit
        assert fit.n == np.count_nonzero(lam > 0)


def test_bad_inputs_raise_alphalora_error():
    with pytest.raises(AlphaLoRAError, match="2-D"):
        eigenvalues(np.ones(5))
    with pytest.raises(AlphaLoRAError, match="2-D"):
        eigenvalues(torch.ones(2, 3, 4))
    with pytest.raises(AlphaLoRAError, match="2-D"):
        eigenvalues_batched([np.ones((3, 3)), np.ones(3)])
    with pytest.raises(AlphaLoRAError, match="Empty"):
        eigenvalues(np.ones((0, 3)))
    with pytest.raises(AlphaLoRAError, match="method"):
        eigenvalues(np.ones((3, 3)), method="qr")
    with pytest.raises(AlphaLoRAError, match="dtype"):
        eigenvalues(np.ones((3, 3)), dtype=torch.float16)
    with pytest.raises(AlphaLoRAError, match="dtype object"):
        eigenvalues(np.array([[1, "a"], [2, 3]], dtype=object))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(AlphaLoRAError, match="device"):
        resolve_device("tpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(AlphaLoRAError, match="no CUDA GPU"):
            resolve_device("cuda")
        with pytest.raises(AlphaLoRAError, match="no CUDA GPU"):
            eigenvalues(np.ones((3, 3)), device="cuda")


def test_matmul_precision_is_restored():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        eigenvalues(np.ones((4, 3), dtype=np.float32), dtype=torch.float32)
        eigenvalues_batched([np.ones((4, 3))])
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_equals_cpu(dtype):
    mats = [_matrix(s, 20 + i) for i, s in enumerate(SHAPES)]
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for method in ("gram", "svd"):
        cpu = eigenvalues_batched(mats, dtype=dtype, method=method, device="cpu")
        gpu = eigenvalues_batched(mats, dtype=dtype, method=method, device="cuda")
        for a, b in zip(gpu, cpu, strict=True):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol * b[-1])
        one = eigenvalues(mats[0], dtype=dtype, method=method, device="cuda")
        np.testing.assert_allclose(one, cpu[0], rtol=tol, atol=tol * cpu[0][-1])


def test_blockwise_gram_matches_whole_matrix(monkeypatch):
    """Large float32 matrices build their float64 Gram block by block (bounded memory):
    same eigenvalues as converting the whole matrix, for tall and wide shapes."""
    import alphalora.spectral.spectra as spectra_mod

    w = torch.randn(1500, 300, generator=torch.Generator().manual_seed(3))
    whole = spectra_mod.eigenvalues(w.double())
    monkeypatch.setattr(spectra_mod, "_GRAM_CHUNK_BYTES", 64 * 300 * 8)  # 64-row blocks
    for m in (w, w.T.contiguous()):
        np.testing.assert_allclose(
            spectra_mod.eigenvalues(m), whole, rtol=1e-9, atol=1e-9 * whole[-1]
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(300, 120), (120, 300), (64, 64)])
def test_lapack_cpu_path_equals_torch_path(shape, dtype):
    """The CPU solver (numpy's syrk + eigvalsh) and the torch solver used on GPUs give the
    same spectrum, for tall, wide and square matrices and bfloat16 inputs."""
    import alphalora.spectral.spectra as spectra_mod

    w = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    for inp in (w, w.to(torch.bfloat16)):
        via_torch = spectra_mod._gram_eigenvalues(inp, dtype).double().numpy()
        via_lapack = spectra_mod._gram_eigenvalues_lapack(inp, dtype)
        assert via_lapack.dtype == np.float64 and via_lapack.shape == (min(shape),)
        tol = 1e-10 if dtype == torch.float64 else 2e-5
        np.testing.assert_allclose(via_lapack, via_torch, rtol=tol, atol=tol * via_torch[-1])


def test_cpu_threads_sets_and_restores_both_pools():
    import alphalora.spectral.spectra as spectra_mod

    libs = spectra_mod._blas_libraries()
    assert libs, "numpy's BLAS should be visible to threadpoolctl"
    before_torch = torch.get_num_threads()
    before_blas = [lib.get_num_threads() for lib in libs]
    with spectra_mod.cpu_threads(1):
        assert torch.get_num_threads() == 1
        assert all(lib.get_num_threads() == 1 for lib in libs)
    assert torch.get_num_threads() == before_torch
    assert [lib.get_num_threads() for lib in libs] == before_blas
