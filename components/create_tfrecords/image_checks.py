"""Checks one image with PIL and decides which bytes go into the TFRecord.

All of an image's data is decoded (so truncated or corrupt data is caught here, not in
training).
An RGB JPEG (or MPO, a JPEG with extra pictures) no larger than the configured maximum
side, stored upright, keeps its original bytes; anything else (PNG, GIF, BMP, WebP, TIFF,
greyscale, CMYK, palette, alpha, EXIF-rotated, too large) is converted to an upright RGB
image, resized down and re-encoded as a JPEG. ``CheckedImage.conversions()`` says which.
"""

from __future__ import annotations

import dataclasses
import io

from PIL import Image, ImageOps, UnidentifiedImageError

# Reasons an input is rejected: short, machine-friendly, stable (they are data in
# errors.jsonl and stats.json). Reading a file can also give components.common.beam's
# MISSING_FILE and UNREADABLE_FILE, as in batch_predict.
MALFORMED_LINE = "malformed_line"
UNKNOWN_LABEL = "unknown_label"
CONFLICTING_LABELS = "conflicting_labels"
DUPLICATE_IMAGE = "duplicate_image"
EMPTY_FILE = "empty_file"
CORRUPT_IMAGE = "corrupt_image"
IMAGE_TOO_LARGE = "image_too_large"
UNSUPPORTED_IMAGE = "unsupported_image"
# The file was replaced or rewritten between the check and the write of its shard.
CHANGED_DURING_RUN = "changed_during_run"

JPEG_QUALITY = 95
# Formats whose bytes TensorFlow's JPEG decoder reads as they are: MPO is a JPEG with
# extra pictures appended (many phone cameras), decoded as its first picture.
JPEG_FORMATS = ("JPEG", "MPO")
_EXIF_ORIENTATION = 0x0112
_WHITE = (255, 255, 255)


class ImageRejected(Exception):
    """An input that cannot become a training record.

    Attributes:
        reason: One of this module's reason constants, e.g. ``"corrupt_image"``.
        detail: Human-readable explanation.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class CheckedImage:
    """What is stored for one image.

    Attributes:
        encoded: JPEG bytes: the original ones, or a re-encoding.
        height: Height in pixels of the stored image.
        width: Width in pixels of the stored image.
        reencoded: Whether ``encoded`` is a re-encoding rather than the original bytes.
        resized: Whether the image was scaled down to the maximum side.
        original_format: The input's format as PIL names it (``"JPEG"``, ``"PNG"``, ...).
        original_mode: The input's PIL mode (``"RGB"``, ``"L"``, ``"CMYK"``, ...).
        rotated: Whether an EXIF orientation other than upright was applied.
        orientation: The EXIF orientation applied (1-8; 1: upright as stored).
        original_size: ``(width, height)`` of the pixels as the file stores them.
    """

    encoded: bytes
    height: int
    width: int
    reencoded: bool
    resized: bool
    original_format: str = "JPEG"
    original_mode: str = "RGB"
    rotated: bool = False
    orientation: int = 1
    original_size: tuple[int, int] = (0, 0)

    def conversions(self) -> tuple[str, ...]:
        """What changed on the way in: ``format`` (not a JPEG), ``mode`` (not RGB),
        ``orientation`` (EXIF rotation applied), ``resized``; empty for original bytes."""
        changes = (
            ("format", self.original_format not in JPEG_FORMATS),
            ("mode", self.original_mode != "RGB"),
            ("orientation", self.rotated),
            ("resized", self.resized),
        )
        return tuple(name for name, changed in changes if changed)


def _open(data: bytes) -> Image.Image:
    """Identifies the image and reads its header (size, mode, EXIF); decodes nothing."""
    if not data:
        raise ImageRejected(EMPTY_FILE, "the file holds zero bytes")
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageRejected(IMAGE_TOO_LARGE, str(e)) from e
    except UnidentifiedImageError as e:
        raise ImageRejected(CORRUPT_IMAGE, "not an image PIL can identify") from e
    except Exception as e:  # PIL plugins raise OSError, SyntaxError, ValueError, ...
        raise ImageRejected(CORRUPT_IMAGE, f"cannot decode the image: {e}") from e


def _decode(image: Image.Image, check_only: bool) -> None:
    """Decodes all of the image's data: raises on truncated or corrupt data
    (LOAD_TRUNCATED_IMAGES is off).

    With ``check_only`` (a JPEG whose bytes are kept as they are), libjpeg decodes at
    1/8 scale (``draft``): it still reads and entropy-decodes every coefficient of the
    file, so damage is caught all the same, but skips most of the inverse DCT and colour
    conversion, about half the time of a full decode.
    """
    try:
        if check_only:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
    except Exception as e:
        raise ImageRejected(CORRUPT_IMAGE, f"cannot decode the image: {e}") from e


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 = upright)."""
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # A broken EXIF block does not make the pixels unusable.
        return 1


def _to_rgb(image: Image.Image) -> Image.Image:
    """Converts any PIL mode to RGB; transparent areas become white."""
    if image.mode == "RGB":
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I") or image.mode == "F":
        # 16/32-bit greyscale: scale to 8 bits before PIL's clipping conversion.
        image = image.convert("F")
        lo, hi = image.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        image = image.point(lambda v: (v - lo) * scale).convert("L")
    return image.convert("RGB")


def _scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = max_side / max(width, height)
    if width >= height:
        return max_side, max(1, round(height * scale))
    return max(1, round(width * scale)), max_side


def check_image(data: bytes, max_image_side: int = 1024) -> CheckedImage:
    """Validates one encoded image and returns the JPEG to store.

    Args:
        data: The file's bytes.
        max_image_side: Largest allowed long side in pixels; larger images are scaled down
            so their long side is exactly this. 0 keeps every size.

    Returns:
        The bytes to store and the stored image's height and width.

    Raises:
        ImageRejected: when the data is empty, not an image, truncated or corrupt
            (``reason`` says which).
    """
    image = _open(data)
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageRejected(CORRUPT_IMAGE, f"image has no pixels ({width}x{height})")
    too_large = max_image_side > 0 and max(width, height) > max_image_side
    original_format, original_mode = image.format or "", image.mode
    rgb_jpeg = original_format in JPEG_FORMATS and original_mode == "RGB" and not too_large
    if rgb_jpeg:  # A JPEG's EXIF block is in its header, read by open().
        orientation = _orientation(image)
    keep = rgb_jpeg and orientation == 1
    _decode(image, check_only=keep)
    if not rgb_jpeg:  # Other formats may store EXIF after the pixels (a PNG's eXIf chunk).
        orientation = _orientation(image)
    if keep:
        return CheckedImage(
            data,
            height,
            width,
            reencoded=False,
            resized=False,
            original_format=original_format,
            original_size=(width, height),
        )

    try:
        image = ImageOps.exif_transpose(image)
        image = _to_rgb(image)
        if too_large:
            image = image.resize(
                _scaled_size(image.width, image.height, max_image_side),
                Image.Resampling.LANCZOS,
                reducing_gap=3.0,
            )
        out = io.BytesIO()
        image.save(out, "JPEG", quality=JPEG_QUALITY)
    except Exception as e:
        raise ImageRejected(
            UNSUPPORTED_IMAGE, f"cannot convert {image.mode} image to an RGB JPEG: {e}"
        ) from e
    return CheckedImage(
        out.getvalue(),
        image.height,
        image.width,
        reencoded=True,
        resized=too_large,
        original_format=original_format,
        original_mode=original_mode,
        rotated=orientation != 1,
        orientation=orientation if orientation in range(1, 9) else 1,
        original_size=(width, height),
    )
