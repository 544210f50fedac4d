"""Input and budget checks shared by the defenses and attacks.

Every public entry point calls these, so bad input fails with a message naming the
argument, the value and what is accepted, instead of deep inside a model.
"""

from __future__ import annotations

import math

import torch


class SettingsError(ValueError):
    """An evaluation whose settings cannot run (bad names, keys, budgets, scenarios, missing files), found
    before anything runs; tools turn it into an exit message, an error mid-run keeps its own type."""

    @classmethod
    def of(cls, err: Exception, context: str = "") -> SettingsError:
        """``err`` (a registry's ``KeyError``, a budget's ``ValueError`` …) as a ``SettingsError``, its text kept."""
        text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        return cls(f"{context}{text}")


PixelRange = tuple[float, float]
DEFAULT_PIXEL_RANGE: PixelRange = (0.0, 255.0)


def check_pixel_range(pixel_range: PixelRange | None) -> PixelRange:
    """Return ``pixel_range`` as floats after checking it is an increasing pair; ``None`` is the default 0–255."""
    if pixel_range is None:
        return DEFAULT_PIXEL_RANGE
    try:
        low, high = (float(v) for v in pixel_range)
    except (TypeError, ValueError):
        raise TypeError(f"pixel_range must be a pair (low, high); got {pixel_range!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"pixel_range must be finite with low < high; got {pixel_range!r}")
    return low, high


def check_budget(name: str, value: float, pixel_range: PixelRange, *, allow_zero: bool = True,
                 allow_fraction: bool = False) -> float:
    """Check a perturbation budget (ε, ε_v, step size) in the units of ``pixel_range``.

    On the default 0–255 scale a value in (0, 1) is almost surely 4/255 passed by
    mistake (the paper's ε = 4/255 is ``eps=4`` here), so it is rejected: a budget
    256× too small would silently report a useless defense or a harmless attack.
    ``allow_fraction`` skips that rule for quantities that are legitimately below one
    level, such as an attack's per-step size (2.5·ε/T = 0.5 for ε = 4, T = 20).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number; got {type(value).__name__} {value!r}")
    value = float(value)
    low, high = check_pixel_range(pixel_range)
    span = high - low
    if not math.isfinite(value) and value != math.inf:
        raise ValueError(f"{name} must be a finite number or inf; got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} pixel levels; got {value!r}")
    if span > 1.0 and 0 < value < 1 and not allow_fraction:
        raise ValueError(
            f"{name}={value!r} is in (0, 1) but pixel_range is {pixel_range!r}: budgets are in "
            f"pixel levels (the paper's 4/255 is {name}=4). Pass pixel_range=(0, 1) if your "
            "images are in [0, 1]."
        )
    return value


def check_positive_int(name: str, value: int, minimum: int = 1) -> int:
    """Check an integer count such as a number of steps."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value!r}")
    return value


def check_image_batch(images: torch.Tensor, name: str = "images") -> None:
    """Check the layout of an image batch: a non-empty float (N, 3, H, W) tensor (values unchecked).

    The adapters call it on normalised inputs, whose values only ``check_images`` can judge
    once converted back to pixels.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, 3, H, W); got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3, H, W) (RGB); got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch: shape {tuple(images.shape)}")
    if images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"{name} has no pixels: shape {tuple(images.shape)} (height and width must be >= 1)")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (e.g. images.float()); got dtype {images.dtype}")
    if images.dtype in (torch.float16, torch.bfloat16) and images.device.type == "cpu":
        # torch's CPU kernels lack half-precision resampling, which the transforms need
        raise TypeError(f"{name} of dtype {images.dtype} are supported on CUDA only; on the CPU pass images.float()")


def check_images(images: torch.Tensor, pixel_range: PixelRange | None = DEFAULT_PIXEL_RANGE,
                 name: str = "images") -> None:
    """Check an image batch: float (N, 3, H, W), finite, inside ``pixel_range``.

    ``pixel_range=None`` means the default 0–255 scale *not stated by the caller*: then a batch that looks like
    [0, 1] images (every value at most 1, some of them fractional) is refused, because budgets in 255ths on
    such images are 255 times too large (``eps=4`` would move pixels across four times the image's range).
    A black 0–255 image (all zeros) passes; stating the range (``pixel_range=(0, 255)``) turns the rule off.
    """
    check_image_batch(images, name)
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or inf values")
    low, high = check_pixel_range(pixel_range)
    tol = 1e-3 * (high - low)
    lowest, highest = images.aminmax()
    if lowest < low - tol or highest > high + tol:
        raise ValueError(
            f"{name} values must lie in pixel_range {(low, high)}; got min {lowest.item():.4g}, "
            f"max {highest.item():.4g}"
        )
    if pixel_range is None and highest <= 1 and bool((images != images.round()).any()):
        raise ValueError(
            f"{name} look like [0, 1] images (max {highest.item():.4g}, fractional values), but budgets are in "
            f"levels of the default 0–255 range: scale the images by 255, or pass pixel_range=(0, 1) (budgets "
            f"then in those units); if they are dark 0–255 images, pass pixel_range=(0, 255)"
        )


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, or the first CUDA GPU when there is one and else the CPU; a device name torch does not know,
    or CUDA on a machine without it, is a ``SettingsError`` before any model is built."""
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise SettingsError(f"unknown device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError(f"device {device!r} asked for, but torch finds no CUDA GPU on this machine "
                            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'})")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise SettingsError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if resolved.type not in ("cpu", "cuda"):
        raise SettingsError(f"device {device!r} is not supported: equi-ext runs on 'cpu' or 'cuda'")
    return resolved


def device_name(device: torch.device) -> str:
    """``device`` as a result page names it: the GPU's model for CUDA."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
