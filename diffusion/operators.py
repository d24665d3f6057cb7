"""Linear forward operators ``y = A x`` for inverse problems on images ``x`` of shape ``(B, C, H, W)``.

Every operator has

* ``forward(x)`` (also ``op(x)``): batched, differentiable through autograd;
* ``adjoint(y)``: the exact adjoint for the real inner product. For complex measurements
  (:class:`FourierMask`) that is ``Re <A x, y> = <x, A^H y>`` with ``A^H y`` real;
* ``pinv(y)``: the Moore-Penrose pseudo-inverse ``A^+`` where it is cheap (:class:`Mask`,
  :class:`Downsample`, :class:`FourierMask`), used for hard data consistency
  ``x <- x + A^+ (y - A x)``, which makes ``A x = y`` exactly for ``y`` in the range of ``A``;
* ``check(shape)``: a one-line ``ValueError`` naming the operator and what does not fit.

Operators are plain objects (no parameters to train); constant tensors are moved to the input's
device and dtype on use, and ``op.to(device)`` moves them ahead of time.

=================  =====================================  =========================
operator           y = A x                                A^+
=================  =====================================  =========================
``Mask``           ``m * x``                              ``m * y``
``Downsample``     ``f x f`` average pooling              nearest upsampling
``Blur``           Gaussian blur, zero padding, 'same'    (not cheap)
``FourierMask``    ``M * FFT2c(x)`` (complex)             ``Re IFFT2c(w M y)``
``Radon``          parallel-beam sinogram (sparse)        (use FBP or iterative)
=================  =====================================  =========================
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


def _hw(shape: Sequence[int]) -> str:
    return f"{shape[-2]}x{shape[-1]}"


class LinearOperator:
    """Base class: a linear map from real images ``(B, C, H, W)`` to measurements.

    Subclasses implement ``_forward`` and ``_adjoint`` (and ``_pinv`` where cheap) and may extend
    ``check``; the public methods validate shapes first.
    """

    _tensor_attrs: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return repr(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def check(self, shape: Sequence[int]) -> None:
        """Raise a one-line ``ValueError`` if images of ``shape`` ``(B, C, H, W)`` do not fit."""
        if len(shape) != 4:
            raise ValueError(f"{self!r}: expected images (B, C, H, W), got shape {tuple(shape)}")

    def check_measurement(self, shape: Sequence[int]) -> None:
        """Raise a one-line ``ValueError`` if measurements of ``shape`` do not fit."""
        if len(shape) != 4:
            raise ValueError(
                f"{self!r}: expected measurements (B, C, ., .), got shape {tuple(shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        """``y = A x``."""
        self.check(x.shape)
        return self._forward(x)

    __call__ = forward

    def adjoint(self, y: Tensor) -> Tensor:
        """``A^T y`` (``Re A^H y`` for complex ``y``): ``<A x, y> = <x, A^T y>``."""
        self.check_measurement(y.shape)
        return self._adjoint(y)

    def pinv(self, y: Tensor) -> Tensor:
        """The pseudo-inverse ``A^+ y``; hard data consistency is ``x + A^+(y - A x)``."""
        self.check_measurement(y.shape)
        return self._pinv(y)

    def _forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def _pinv(self, y: Tensor) -> Tensor:
        raise NotImplementedError(
            f"{self!r}: no cheap pseudo-inverse; use the adjoint with an iterative solver "
            "(e.g. conjugate gradients on A^T A) instead"
        )

    def to(self, device: torch.device | str) -> LinearOperator:
        """Move the operator's constant tensors to ``device``; returns ``self``."""
        for attr in self._tensor_attrs:
            setattr(self, attr, getattr(self, attr).to(device))
        return self


class Mask(LinearOperator):
    """Inpainting: ``y = m * x`` with ``m`` 1 on known pixels, 0 on missing ones.

    ``mask`` is ``(H, W)`` or ``(B or 1, 1 or C, H, W)``; it is its own adjoint and
    pseudo-inverse (a 0/1 diagonal is an orthogonal projection).
    """

    _tensor_attrs = ("mask",)

    def __init__(self, mask: Tensor) -> None:
        mask = torch.as_tensor(mask)
        if mask.ndim == 2:
            mask = mask[None, None]  # (1, 1, H, W)
        if mask.ndim != 4:
            raise ValueError(
                f"Mask: mask must be (H, W) or (B, C, H, W), got shape {tuple(mask.shape)}"
            )
        self.mask = mask.float()

    def __repr__(self) -> str:
        return f"Mask({_hw(self.mask.shape)}, known={float(self.mask.mean()):.2f})"

    def check(self, shape: Sequence[int]) -> None:
        super().check(shape)
        m = self.mask.shape
        if tuple(shape[-2:]) != tuple(m[-2:]):
            raise ValueError(f"{self!r}: image size {_hw(shape)} does not match the mask")
        for dim, label in ((0, "batch"), (1, "channel")):
            if m[dim] not in (1, shape[dim]):
                raise ValueError(
                    f"{self!r}: mask {label} size {m[dim]} does not fit images with "
                    f"{label} size {shape[dim]}"
                )

    check_measurement = check

    def _forward(self, x: Tensor) -> Tensor:
        return self.mask.to(x) * x

    _adjoint = _forward
    _pinv = _forward


class Downsample(LinearOperator):
    """Super-resolution: ``f x f`` average pooling, ``(B, C, H, W) -> (B, C, H/f, W/f)``.

    ``A^T y`` spreads each value over its ``f x f`` block divided by ``f^2``; since
    ``A A^T = I / f^2`` the pseudo-inverse ``A^+ = f^2 A^T`` is nearest-neighbour upsampling.
    """

    def __init__(self, factor: int) -> None:
        if int(factor) != factor or factor < 1:
            raise ValueError(f"Downsample: factor must be a positive integer, got {factor}")
        self.factor = int(factor)

    def __repr__(self) -> str:
        return f"Downsample(factor={self.factor})"

    def check(self, shape: Sequence[int]) -> None:
        super().check(shape)
        f = self.factor
        if shape[-2] % f or shape[-1] % f:
            raise ValueError(f"{self!r}: image size {_hw(shape)} is not divisible by {f}")

    def _forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.factor)  # (B, C, H/f, W/f)

    def _pinv(self, y: Tensor) -> Tensor:
        f = self.factor
        return y.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)  # (B, C, H, W)

    def _adjoint(self, y: Tensor) -> Tensor:
        return self._pinv(y) / self.factor**2


class Blur(LinearOperator):
    """Deblurring: per-channel Gaussian blur of std ``sigma`` (pixels), 'same' size, zero padding.

    ``kernel_size`` is odd (default ``2 ceil(3 sigma) + 1``). The adjoint is the transposed
    convolution, which for this symmetric kernel is the same blur. No cheap pseudo-inverse.
    """

    _tensor_attrs = ("kernel",)

    def __init__(self, sigma: float, kernel_size: int | None = None) -> None:
        if not sigma > 0:
            raise ValueError(f"Blur: sigma must be positive, got {sigma}")
        if kernel_size is None:
            kernel_size = 2 * math.ceil(3 * sigma) + 1
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"Blur: kernel_size must be a positive odd integer, got {kernel_size}")
        self.sigma, self.kernel_size = float(sigma), int(kernel_size)
        r = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
        g = torch.exp(-(r**2) / (2 * sigma**2))
        g = g / g.sum()
        self.kernel = torch.outer(g, g)  # (k, k), sums to 1

    def __repr__(self) -> str:
        return f"Blur(sigma={self.sigma:g}, kernel_size={self.kernel_size})"

    def _weight(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        return self.kernel.to(x).expand(c, 1, -1, -1)  # (C, 1, k, k)

    def _forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self._weight(x), padding=self.kernel_size // 2, groups=x.shape[1])

    def _adjoint(self, y: Tensor) -> Tensor:
        pad = self.kernel_size // 2
        return F.conv_transpose2d(y, self._weight(y), padding=pad, groups=y.shape[1])


def fft2c(x: Tensor) -> Tensor:
    """Orthonormal 2-D FFT over the last two dims with the zero frequency at index ``n // 2``."""
    dims = (-2, -1)
    return torch.fft.fftshift(
        torch.fft.fft2(torch.fft.ifftshift(x, dim=dims), norm="ortho"), dim=dims
    )


def ifft2c(k: Tensor) -> Tensor:
    """Inverse of :func:`fft2c` (and its adjoint: the transform is unitary)."""
    dims = (-2, -1)
    return torch.fft.fftshift(
        torch.fft.ifft2(torch.fft.ifftshift(k, dim=dims), norm="ortho"), dim=dims
    )


def _reflect_k(m: Tensor) -> Tensor:
    """``m(-k)`` on the centred grid: index ``j`` holds frequency ``j - n // 2``."""
    for dim in (-2, -1):
        m = torch.flip(m, dims=(dim,))
        if m.shape[dim] % 2 == 0:  # even n: -(j - n/2) + n/2 = n - j  (mod n)
            m = torch.roll(m, 1, dims=dim)
    return m


class FourierMask(LinearOperator):
    """Accelerated MRI: ``y = M * FFT2c(x)`` (complex), ``FFT2c`` = :func:`fft2c`.

    ``mask`` is ``(W,)`` (1-D Cartesian sampling of k-space columns, the same for every row) or
    ``(H, W)``, 1 = sampled, on the centred grid. For real ``x`` the adjoint in the real inner
    product is ``A^T y = Re IFFT2c(M * y)``.

    Pseudo-inverse: the image is real, so its spectrum is conjugate-symmetric and a sample at
    ``k`` also tells the one at ``-k``. Hence ``A^T A = IFFT2c D FFT2c`` with
    ``D = (M(k) + M(-k)) / 2`` in {0, 1/2, 1}, and ``A^+ y = Re IFFT2c(w * M * y)`` with
    ``w = 2 / (M(k) + M(-k))``: 2 where only ``k`` is sampled, 1 where ``-k`` is sampled too.
    Then ``A A^+ y = y`` on the range; for a mask symmetric under ``k -> -k``, ``A^+ = A^T``.
    """

    _tensor_attrs = ("mask",)

    def __init__(self, mask: Tensor) -> None:
        mask = torch.as_tensor(mask)
        if mask.ndim not in (1, 2):
            raise ValueError(
                f"FourierMask: mask must be (W,) or (H, W), got shape {tuple(mask.shape)}"
            )
        self.mask = mask.float()  # (W,) or (H, W)

    @property
    def acceleration(self) -> float:
        """Sampled fraction of k-space, inverted: ``numel / sum(mask)``."""
        return self.mask.numel() / float(self.mask.sum())

    def __repr__(self) -> str:
        size = f"W={self.mask.shape[0]}" if self.mask.ndim == 1 else _hw(self.mask.shape)
        return f"FourierMask({size}, acceleration={self.acceleration:.2f})"

    def check(self, shape: Sequence[int]) -> None:
        super().check(shape)
        m = self.mask.shape
        if self.mask.ndim == 1 and shape[-1] != m[0]:
            raise ValueError(f"{self!r}: image width {shape[-1]} does not match the mask")
        if self.mask.ndim == 2 and tuple(shape[-2:]) != tuple(m):
            raise ValueError(f"{self!r}: image size {_hw(shape)} does not match the mask")

    check_measurement = check

    def _full_mask(self, h: int, ref: Tensor) -> Tensor:
        m = self.mask.to(device=ref.device, dtype=ref.real.dtype)
        return m.expand(h, -1) if m.ndim == 1 else m  # (H, W)

    def _forward(self, x: Tensor) -> Tensor:
        return self._full_mask(x.shape[-2], x) * fft2c(x)  # (B, C, H, W) complex

    def _adjoint(self, y: Tensor) -> Tensor:
        return ifft2c(self._full_mask(y.shape[-2], y) * y).real

    def _pinv(self, y: Tensor) -> Tensor:
        m = self._full_mask(y.shape[-2], y)
        both = m + _reflect_k(m)  # 2 where k and -k are sampled, 1 where only one of them
        w = torch.where(m > 0, 2.0 / both.clamp_min(1), torch.zeros_like(m))
        return ifft2c(w * y).real

    def zero_filled(self, y: Tensor) -> Tensor:
        """The classic baseline ``|IFFT2c(y)|``: magnitude of the zero-filled reconstruction."""
        self.check_measurement(y.shape)
        return ifft2c(y).abs()


class _SparseMatmul(torch.autograd.Function):
    """``A @ X`` for a sparse ``A`` with the backward ``A^T @ G`` from a stored ``A^T``."""

    @staticmethod
    def forward(ctx, a: Tensor, at: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(a, at)
        return a @ x

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, None, Tensor]:  # type: ignore[override]
        a, at = ctx.saved_tensors
        return None, None, _SparseMatmul.apply(at, a, grad)


@functools.lru_cache(maxsize=4)
def radon_matrix(size: int, angles: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """The ``(size * n_views, size * size)`` Radon matrix and its transpose; cached.

    Both are float64 sparse CSR tensors on the CPU.

    Row ``t * n_views + v`` (detector ``t``, view ``v``), column ``r * size + c`` (pixel
    ``(r, c)``); see :class:`Radon` for the geometry.
    """
    n, c0 = size, size // 2
    idx = torch.arange(n, dtype=torch.float64) - c0
    t, s = torch.meshgrid(idx, idx, indexing="ij")  # (n_det, n_steps): detector, along the ray
    theta = torch.deg2rad(torch.tensor(angles, dtype=torch.float64))  # (V,)
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    col = c0 + cos * t + sin * s  # (V, n_det, n_steps)
    row = c0 - sin * t + cos * s
    r0, q0 = torch.floor(row), torch.floor(col)
    dr, dq = row - r0, col - q0
    v_idx = torch.arange(len(angles))[:, None, None].expand_as(col)
    out_row = (torch.arange(n)[None, :, None] * len(angles) + v_idx).expand_as(col)
    rows, cols, vals = [], [], []
    for rr, qq, wgt in (
        (r0, q0, (1 - dr) * (1 - dq)),
        (r0, q0 + 1, (1 - dr) * dq),
        (r0 + 1, q0, dr * (1 - dq)),
        (r0 + 1, q0 + 1, dr * dq),
    ):
        keep = (rr >= 0) & (rr < n) & (qq >= 0) & (qq < n) & (wgt > 0)
        rows.append(out_row[keep])
        cols.append((rr[keep] * n + qq[keep]).long())
        vals.append(wgt[keep])
    coo = torch.sparse_coo_tensor(
        torch.stack([torch.cat(rows), torch.cat(cols)]),
        torch.cat(vals),
        (n * len(angles), n * n),
        check_invariants=False,  # indices are in range by construction
    ).coalesce()  # sums samples of one ray that fall on the same pixel
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return coo.to_sparse_csr(), coo.t().coalesce().to_sparse_csr()


class Radon(LinearOperator):
    """Sparse-view CT: parallel-beam Radon transform, ``(B, C, n, n) -> (B, C, n, n_views)``.

    Reproduces ``skimage.transform.radon(image, theta=angles, circle=True)`` (output
    ``(n_det, n_views)``, ``n_det = n``), so ``skimage.transform.iradon`` (filtered
    back-projection) reconstructs from our sinograms. Geometry, with centre ``c0 = n // 2`` and
    pixel ``(row, col)``: for view angle ``theta`` (degrees) and detector ``t`` (index
    ``c0 + t``) the ray is sampled once per pixel step ``s = -c0, ..., n - 1 - c0`` at

        col = c0 + t cos(theta) + s sin(theta),   row = c0 - t sin(theta) + s cos(theta)

    with bilinear interpolation (zero outside the image), and the samples are summed. So at
    ``theta = 0`` the sinogram is the column sums (detector ``j`` = column ``j``), and at 90
    degrees detector ``j`` sees row ``2 c0 - j`` (top rows land on high detector indices).
    Like skimage, values are meant to be zero outside the inscribed circle ``|p - c0| <= n // 2``.

    ``A`` is a precomputed sparse matrix (about ``4 n^2 n_views`` non-zeros, built once per
    ``(size, angles)`` and cached), so ``forward`` and ``adjoint`` are exact transposes and both
    are differentiable. Angles are ``n_views`` evenly spaced in [0, 180) unless given.
    """

    _tensor_attrs = ("_a", "_at")

    def __init__(
        self, size: int, n_views: int | None = None, angles: Sequence[float] | None = None
    ) -> None:
        if angles is None:
            n_views = 180 if n_views is None else n_views
            if n_views < 1:
                raise ValueError(f"Radon: n_views must be positive, got {n_views}")
            angles = [180.0 * i / n_views for i in range(n_views)]
        angles = tuple(float(a) for a in angles)
        if n_views is not None and n_views != len(angles):
            raise ValueError(f"Radon: n_views={n_views} but {len(angles)} angles were given")
        if size < 2:
            raise ValueError(f"Radon: size must be at least 2, got {size}")
        self.size, self.angles = int(size), angles
        self._a, self._at = radon_matrix(self.size, angles)
        self._cast: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    @property
    def n_views(self) -> int:
        return len(self.angles)

    def __repr__(self) -> str:
        return f"Radon(size={self.size}, n_views={self.n_views})"

    def check(self, shape: Sequence[int]) -> None:
        super().check(shape)
        if tuple(shape[-2:]) != (self.size, self.size):
            raise ValueError(f"{self!r}: image size {_hw(shape)} is not {self.size}x{self.size}")

    def check_measurement(self, shape: Sequence[int]) -> None:
        super().check_measurement(shape)
        if tuple(shape[-2:]) != (self.size, self.n_views):
            raise ValueError(
                f"{self!r}: sinogram size {_hw(shape)} is not {self.size}x{self.n_views} "
                "(detectors x views)"
            )

    def to(self, device: torch.device | str) -> Radon:
        super().to(device)
        self._cast.clear()
        return self

    def _mats(self, ref: Tensor) -> tuple[Tensor, Tensor]:
        key = (ref.device, ref.dtype)
        if key not in self._cast:
            self._cast[key] = (self._a.to(*key), self._at.to(*key))
        return self._cast[key]

    def _forward(self, x: Tensor) -> Tensor:
        a, at = self._mats(x)
        b, c = x.shape[:2]
        flat = rearrange(x, "b c h w -> (h w) (b c)")  # (n^2, B*C)
        y = _SparseMatmul.apply(a, at, flat)  # (n_det * V, B*C)
        return rearrange(y, "(t v) (b c) -> b c t v", v=self.n_views, b=b, c=c)

    def _adjoint(self, y: Tensor) -> Tensor:
        a, at = self._mats(y)
        b, c = y.shape[:2]
        flat = rearrange(y, "b c t v -> (t v) (b c)")  # (n_det * V, B*C)
        x = _SparseMatmul.apply(at, a, flat)  # (n^2, B*C)
        return rearrange(x, "(h w) (b c) -> b c h w", h=self.size, b=b, c=c)

    def _pinv(self, y: Tensor) -> Tensor:
        raise NotImplementedError(
            f"{self!r}: no cheap pseudo-inverse; use filtered back-projection "
            "(skimage.transform.iradon) or an iterative solver on A^T A"
        )


OPERATORS: dict[str, type[LinearOperator]] = {
    "inpaint": Mask,
    "super_resolution": Downsample,
    "deblur": Blur,
    "mri": FourierMask,
    "ct": Radon,
}


def make_operator(task: str, image_size: int, **params) -> LinearOperator:
    """The operator for ``task`` (a key of ``OPERATORS``), checked against square images.

    ``params`` go to the constructor: ``mask`` (inpaint, mri), ``factor`` (super_resolution),
    ``sigma``/``kernel_size`` (deblur), ``n_views``/``angles`` (ct; ``size`` is ``image_size``).
    """
    if task not in OPERATORS:
        raise ValueError(f"task: unknown {task!r}; choose one of {sorted(OPERATORS)}")
    cls = OPERATORS[task]
    op = cls(size=image_size, **params) if cls is Radon else cls(**params)
    op.check((1, 1, image_size, image_size))
    return op
