"""How training images are varied: the random crop, flips, rotation, brightness and contrast.

Each is a parameter of the train stage (``Augmentation``, book chapter 6), drawn anew per
image and per epoch, and only the training stream sees them: evaluation and the exported
model's serving signature decode and resize the whole image (``data.make_dataset`` with
``training=False`` takes no augmentation at all).

Which to turn off depends on the images: a flip that turns a 2 into something else is
wrong for digits and text; satellite, microscope and texture images have no "up" and
gain from right-angle rotations; a tight crop of a small object loses the object. The
defaults are the ones measured best on real image sets (docs/benchmarks.md,
"Augmentation and schedules on real images").

The random crop is Inception-style: ``sample_distorted_bounding_box`` picks a window of
``crop_area_min``..``crop_area_max`` of the image's area with a width/height ratio within
``1 / crop_aspect_ratio_max``..``crop_aspect_ratio_max``, and ``decode_and_crop_jpeg``
decodes only that window, resized to the model's input by
``components.common.preprocessing.resize``, as serving resizes whole images. Flips,
brightness and contrast then run on whole batches, fused by XLA; a rotation, when asked
for, is one projective transform per image (reflecting at the borders).
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

from components.common import preprocessing

FLIPS = ("none", "horizontal", "vertical", "both")


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """The random variations of training images.

    Attributes:
        flip: Mirror images at random: ``"none"``, ``"horizontal"`` (left-right),
            ``"vertical"`` (up-down) or ``"both"`` (each independently).
        crop_area_min: Smallest share of an image's area a random crop keeps (0 to 1);
            1 (with ``crop_aspect_ratio_max`` 1) trains on whole images.
        crop_area_max: Largest share of the area a crop keeps.
        crop_aspect_ratio_max: Crops have a width/height ratio between its inverse and
            it (1 or more).
        rotation_degrees: Rotate by an angle drawn uniformly within plus or minus this
            many degrees (0 to 180); 0 for none.
        right_angle_rotation: Also rotate by 0, 90, 180 or 270 degrees at random (images
            with no "up": satellite, microscope, textures).
        brightness: Shift brightness by up to this share of the pixel range (0 to 1).
        contrast: Scale contrast by a factor within 1 plus or minus this (0 to 1).
    """

    flip: str = "horizontal"
    crop_area_min: float = 0.5
    crop_area_max: float = 1.0
    crop_aspect_ratio_max: float = 1.33
    rotation_degrees: float = 0.0
    right_angle_rotation: bool = False
    brightness: float = 0.08
    contrast: float = 0.15

    def __post_init__(self):
        if self.flip not in FLIPS:
            raise ValueError(f"flip must be one of {FLIPS}, got {self.flip!r}")
        if not 0 < self.crop_area_min <= self.crop_area_max <= 1:
            raise ValueError(
                "the crop's area range must satisfy 0 < crop_area_min <= crop_area_max <= 1; "
                f"got {self.crop_area_min}, {self.crop_area_max}"
            )
        if self.crop_aspect_ratio_max < 1:
            raise ValueError(
                f"crop_aspect_ratio_max must be 1 or more, got {self.crop_aspect_ratio_max}"
            )
        if not 0 <= self.rotation_degrees <= 180:
            raise ValueError(f"rotation_degrees must be in [0, 180], got {self.rotation_degrees}")
        for name in ("brightness", "contrast"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    @classmethod
    def off(cls) -> Augmentation:
        """No variation at all: training sees what evaluation and serving see."""
        return cls(
            flip="none",
            crop_area_min=1.0,
            crop_aspect_ratio_max=1.0,
            rotation_degrees=0.0,
            right_angle_rotation=False,
            brightness=0.0,
            contrast=0.0,
        )

    @property
    def crops(self) -> bool:
        """Whether images are randomly cropped (else decoded whole, as for serving)."""
        return self.crop_area_min < 1 or self.crop_aspect_ratio_max > 1

    @property
    def rotates(self) -> bool:
        return self.rotation_degrees > 0 or self.right_angle_rotation


def random_crop_window(
    shape: tf.Tensor, augmentation: Augmentation, generator: tf.random.Generator
) -> tf.Tensor:
    """An Inception-style random crop ``[y, x, height, width]`` of an image of ``shape``."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.zeros([1, 0, 4]),
        seed=generator.make_seeds(1)[:, 0],
        min_object_covered=0.0,
        aspect_ratio_range=(
            1 / augmentation.crop_aspect_ratio_max,
            augmentation.crop_aspect_ratio_max,
        ),
        area_range=(augmentation.crop_area_min, augmentation.crop_area_max),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.concat([begin[:2], size[:2]], axis=0)


def decode_random_crop(
    encoded: tf.Tensor,
    image_size: int,
    augmentation: Augmentation,
    generator: tf.random.Generator,
) -> tf.Tensor:
    """Decodes only a random window of a JPEG and resizes it: float32 in ``[0, 255]``."""
    window = random_crop_window(tf.image.extract_jpeg_shape(encoded), augmentation, generator)
    image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
    return preprocessing.resize(image, image_size)


def random_crop(
    image: tf.Tensor,
    image_size: int,
    augmentation: Augmentation,
    generator: tf.random.Generator,
) -> tf.Tensor:
    """``decode_random_crop`` for an already decoded image."""
    window = random_crop_window(tf.shape(image), augmentation, generator)
    crop = tf.slice(image, [window[0], window[1], 0], [window[2], window[3], 3])
    return preprocessing.resize(crop, image_size)


@tf.function(jit_compile=True)
def _jitter(images, flip_lr, flip_ud, delta, factor):
    # XLA fuses this into about one pass over the batch; as separate ops it is several
    # passes and, at 224 px, slower than decoding.
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    images = tf.where(flip_lr, tf.reverse(images, axis=[2]), images)
    images = tf.where(flip_ud, tf.reverse(images, axis=[1]), images)
    # Brightness then contrast as tf.image does them: ((x + delta) - mean') * factor + mean'
    # with mean' = mean + delta, that is x * factor + (mean * (1 - factor) + delta).
    return tf.clip_by_value(images * factor + (mean * (1.0 - factor) + delta), 0.0, 255.0)


def _rotation_transforms(angles: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Projective transforms rotating each image by its angle (radians) about its centre:
    output pixel (x, y) reads the input at the transform of (x, y)."""
    cos, sin = tf.cos(angles), tf.sin(angles)
    w, h = tf.cast(width - 1, tf.float32), tf.cast(height - 1, tf.float32)
    x_offset = (w - (cos * w - sin * h)) / 2.0
    y_offset = (h - (sin * w + cos * h)) / 2.0
    zeros = tf.zeros_like(angles)
    return tf.stack([cos, -sin, x_offset, sin, cos, y_offset, zeros, zeros], axis=1)


def rotate(images: tf.Tensor, angles: tf.Tensor) -> tf.Tensor:
    """Rotates each image of a batch by its angle (radians), reflecting at the borders."""
    shape = tf.shape(images)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=_rotation_transforms(angles, shape[1], shape[2]),
        output_shape=shape[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )


def augment_batch(
    images: tf.Tensor, augmentation: Augmentation, generator: tf.random.Generator
) -> tf.Tensor:
    """The batch's flips, rotations, brightness and contrast, drawn per image.

    Args:
        images: float32 ``[batch, height, width, 3]`` in ``[0, 255]``.
        augmentation: What to vary.
        generator: The source of randomness.

    Returns:
        The augmented batch, clipped to ``[0, 255]``.
    """
    per_image = [tf.shape(images)[0], 1, 1, 1]
    coin = generator.uniform([2, *per_image]) < 0.5
    flip_lr = coin[0] & (augmentation.flip in ("horizontal", "both"))
    flip_ud = coin[1] & (augmentation.flip in ("vertical", "both"))
    delta = generator.uniform(per_image, -1.0, 1.0) * (augmentation.brightness * 255.0)
    factor = 1.0 + generator.uniform(per_image, -1.0, 1.0) * augmentation.contrast
    # tf.data runs on the host; keep the XLA cluster there on a machine with a GPU too.
    with tf.device("/device:CPU:0"):
        images = _jitter(images, flip_lr, flip_ud, delta, factor)
        if augmentation.rotates:
            images = rotate(images, _random_angles(tf.shape(images)[0], augmentation, generator))
    return images


def _random_angles(
    count: tf.Tensor, augmentation: Augmentation, generator: tf.random.Generator
) -> tf.Tensor:
    limit = math.radians(augmentation.rotation_degrees)
    angles = generator.uniform([count], -limit, limit) if limit else tf.zeros([count])
    if augmentation.right_angle_rotation:
        quarter_turns = generator.uniform([count], 0, 4, dtype=tf.int32)
        angles += tf.cast(quarter_turns, tf.float32) * (math.pi / 2)
    return angles
