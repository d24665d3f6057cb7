"""Forward operators: exact adjoints, pseudo-inverses, autograd, shape errors, Radon vs skimage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.transform import iradon, radon

from stdiff.diffusion.operators import (
    OPERATORS,
    Blur,
    Downsample,
    FourierMask,
    LinearOperator,
    Mask,
    Radon,
    fft2c,
    ifft2c,
    make_operator,
)

B, C, N = 2, 3, 16


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(shape: tuple[int, ...], seed: int, complex_: bool = False) -> torch.Tensor:
    g = _gen(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if complex_:
        x = torch.complex(x, torch.randn(shape, generator=g, dtype=torch.float64))
    return x


def _asym_kmask(h: int, w: int) -> torch.Tensor:
    m = torch.rand(h, w, generator=_gen(5)) < 0.4
    m[h // 2, w // 2] = True
    return m


OPS: dict[str, LinearOperator] = {
    "mask": Mask(torch.rand(N, N, generator=_gen(1)) < 0.5),
    "mask_4d": Mask(torch.rand(B, 1, N, N, generator=_gen(2)) < 0.5),
    "downsample": Downsample(4),
    "blur": Blur(sigma=1.5),
    "fourier_1d": FourierMask(torch.rand(N, generator=_gen(3)) < 0.4),
    "fourier_2d": FourierMask(_asym_kmask(N, N)),
    "fourier_odd": FourierMask(_asym_kmask(15, 17)),
    "radon": Radon(N, n_views=12),
    "radon_odd": Radon(15, angles=[0.0, 17.0, 90.0, 133.5]),
}


def _image_shape(op: LinearOperator) -> tuple[int, int, int, int]:
    if isinstance(op, FourierMask) and op.mask.ndim == 2:
        return (B, C, *op.mask.shape)
    if isinstance(op, Radon):
        return (B, C, op.size, op.size)
    return (B, C, N, N)


def _measure(op: LinearOperator, seed: int) -> torch.Tensor:
    """A random measurement of the right shape (complex for FourierMask)."""
    shape = op(torch.zeros(_image_shape(op), dtype=torch.float64)).shape
    return _randn(tuple(shape), seed, complex_=isinstance(op, FourierMask))


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The real inner product ``Re <a, b>``."""
    return (a.conj() * b).real.sum() if a.is_complex() else (a * b).sum()


@pytest.mark.parametrize("name", OPS)
def test_dot_product_adjoint(name: str) -> None:
    op = OPS[name]
    x, y = _randn(_image_shape(op), 10), _measure(op, 11)
    lhs, rhs = _inner(op(x), y), _inner(x, op.adjoint(y))
    assert op.adjoint(y).dtype == torch.float64
    assert torch.isclose(lhs, rhs, rtol=1e-10, atol=0), (float(lhs), float(rhs))


@pytest.mark.parametrize("name", OPS)
def test_backward_is_the_adjoint(name: str) -> None:
    op = OPS[name]
    x = _randn(_image_shape(op), 12).requires_grad_()
    g = _measure(op, 13)
    _inner(op(x), g).backward()
    torch.testing.assert_close(x.grad, op.adjoint(g), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "name", ["mask", "mask_4d", "downsample", "fourier_1d", "fourier_2d", "fourier_odd"]
)
def test_pinv_is_a_right_inverse_on_the_range(name: str) -> None:
    op = OPS[name]
    x = _randn(_image_shape(op), 14)
    y = op(x)
    torch.testing.assert_close(op(op.pinv(y)), y, rtol=1e-10, atol=1e-10)
    # hard data consistency from any start
    z = _randn(_image_shape(op), 15)
    torch.testing.assert_close(op(z + op.pinv(y - op(z))), y, rtol=1e-10, atol=1e-10)
    # A^+ A is an orthogonal projection: idempotent and self-adjoint
    p = op.pinv(op(z))
    torch.testing.assert_close(op.pinv(op(p)), p, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(_inner(p, x), _inner(z, op.pinv(op(x))), rtol=1e-10, atol=1e-10)


def test_downsample_pinv_is_nearest_upsampling() -> None:
    y = _randn((1, 1, 2, 2), 0)
    up = Downsample(2).pinv(y)
    assert up.shape == (1, 1, 4, 4)
    assert torch.equal(up[0, 0, :2, :2], y[0, 0, 0, 0].expand(2, 2))


def test_fourier_pinv_is_the_adjoint_for_a_symmetric_mask() -> None:
    m = torch.zeros(N, dtype=torch.bool)
    m[N // 2 - 2 : N // 2 + 3] = True  # symmetric about the centre N // 2
    m[[N // 2 - 5, N // 2 + 5]] = True
    op, y = FourierMask(m), _measure(FourierMask(m), 0)
    torch.testing.assert_close(op.pinv(y), op.adjoint(y))
    assert op.acceleration == pytest.approx(N / 7)


def test_fft2c_is_unitary_and_centred() -> None:
    x = _randn((1, 1, 8, 9), 0)
    k = fft2c(x)
    torch.testing.assert_close(ifft2c(k).real, x)
    torch.testing.assert_close(k.abs().square().sum(), x.square().sum())
    ones = fft2c(torch.ones(1, 1, 8, 9, dtype=torch.float64))
    assert int(ones.abs().argmax()) == 4 * 9 + 4  # DC at (n // 2, n // 2)


def test_zero_filled_with_full_sampling_is_the_magnitude() -> None:
    x = _randn((B, C, N, N), 0)
    op = FourierMask(torch.ones(N))
    torch.testing.assert_close(op.zero_filled(op(x)), x.abs())
    assert op.acceleration == 1.0


def test_blur_adjoint_equals_the_blur_and_preserves_constants() -> None:
    op, y = Blur(sigma=1.0, kernel_size=5), _randn((B, C, N, N), 0)
    torch.testing.assert_close(op.adjoint(y), op(y))  # symmetric kernel
    ones = op(torch.ones(1, 1, 12, 12, dtype=torch.float64))
    torch.testing.assert_close(ones[..., 2:-2, 2:-2], torch.ones(1, 1, 8, 8, dtype=torch.float64))
    assert op.kernel.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("op", "shape", "message"),
    [
        (
            Downsample(3),
            (1, 1, 28, 28),
            r"Downsample\(factor=3\): image size 28x28 is not divisible by 3",
        ),
        (
            Mask(torch.ones(8, 8)),
            (1, 1, 8, 9),
            r"Mask\(8x8.*\): image size 8x9 does not match the mask",
        ),
        (
            Mask(torch.ones(3, 1, 8, 8)),
            (2, 1, 8, 8),
            r"mask batch size 3 does not fit images with batch size 2",
        ),
        (
            FourierMask(torch.ones(8)),
            (1, 1, 8, 10),
            r"FourierMask\(W=8.*\): image width 10 does not match",
        ),
        (
            Radon(8, n_views=4),
            (1, 1, 9, 9),
            r"Radon\(size=8, n_views=4\): image size 9x9 is not 8x8",
        ),
        (Blur(1.0), (8, 8), r"Blur\(sigma=1, kernel_size=7\): expected images \(B, C, H, W\)"),
    ],
)
def test_shape_errors_are_one_clear_line(op: LinearOperator, shape: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        op(torch.zeros(shape))
    assert "\n" not in str(err.value)


def test_measurement_shape_and_constructor_errors() -> None:
    with pytest.raises(ValueError, match=r"sinogram size 8x5 is not 8x4 \(detectors x views\)"):
        Radon(8, n_views=4).adjoint(torch.zeros(1, 1, 8, 5))
    with pytest.raises(ValueError, match="n_views=3 but 2 angles"):
        Radon(8, n_views=3, angles=[0, 90])
    with pytest.raises(ValueError, match="kernel_size must be a positive odd integer"):
        Blur(1.0, kernel_size=4)
    with pytest.raises(ValueError, match="factor must be a positive integer"):
        Downsample(0)
    with pytest.raises(NotImplementedError, match="filtered back-projection"):
        Radon(8, n_views=4).pinv(torch.zeros(1, 1, 8, 4))
    with pytest.raises(NotImplementedError, match="no cheap pseudo-inverse"):
        Blur(1.0).pinv(torch.zeros(1, 1, 8, 8))


def test_make_operator_and_registry() -> None:
    assert set(OPERATORS) == {"inpaint", "super_resolution", "deblur", "mri", "ct"}
    op = make_operator("ct", 16, n_views=6)
    assert isinstance(op, Radon) and op(torch.zeros(1, 1, 16, 16)).shape == (1, 1, 16, 6)
    assert repr(make_operator("deblur", 16, sigma=2.0)) == "Blur(sigma=2, kernel_size=13)"
    with pytest.raises(ValueError, match="image size 30x30 is not divisible by 4"):
        make_operator("super_resolution", 30, factor=4)
    with pytest.raises(ValueError, match="unknown 'denoise'"):
        make_operator("denoise", 16)


def test_to_device_keeps_working() -> None:
    op = Radon(8, n_views=3).to("cpu")
    assert op(torch.ones(1, 1, 8, 8)).dtype == torch.float32
    assert Mask(torch.ones(8, 8)).to("cpu").mask.device.type == "cpu"


def _phantom(n: int) -> np.ndarray:
    """A smooth disc with an off-centre Gaussian blob, zero outside the inscribed circle."""
    rr, cc = np.mgrid[:n, :n] - n // 2
    r = np.hypot(rr, cc)
    disc = 1 / (1 + np.exp((r - 0.35 * n) / 1.0))
    blob = np.exp(-((rr + 0.2 * n) ** 2 + (cc - 0.15 * n) ** 2) / (2 * (0.06 * n) ** 2))
    return (disc + blob) * (r <= n // 2 - 1)


@pytest.mark.parametrize("n", [32, 33])
def test_radon_matches_skimage(n: int) -> None:
    op = Radon(n, n_views=30)
    img = _phantom(n)
    ours = op(torch.from_numpy(img)[None, None])[0, 0].numpy()  # (n_det, n_views)
    ref = radon(img, theta=np.array(op.angles), circle=True)
    assert ours.shape == ref.shape == (n, 30)
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 1e-10
    # skimage's filtered back-projection works on our sinogram
    rec = iradon(ours, theta=np.array(op.angles), circle=True, filter_name="ramp")
    inside = np.hypot(*(np.mgrid[:n, :n] - n // 2)) < n // 2 - 2
    assert np.linalg.norm((rec - img)[inside]) / np.linalg.norm(img[inside]) < 0.2


def test_radon_orientation_matches_skimage() -> None:
    n, c0 = 32, 16
    img = np.zeros((n, n))
    img[c0 - 8, c0 + 5] = 1.0  # a point above and right of the centre
    op = Radon(n, angles=[0.0, 90.0])
    ours = op(torch.from_numpy(img)[None, None])[0, 0].numpy()
    ref = radon(img, theta=[0.0, 90.0], circle=True)
    # angle 0: detector = column; angle 90: detector j sees row 2 c0 - j
    assert ours[:, 0].argmax() == ref[:, 0].argmax() == c0 + 5
    assert ours[:, 1].argmax() == ref[:, 1].argmax() == c0 + 8
    np.testing.assert_allclose(ours, ref, atol=1e-12)
