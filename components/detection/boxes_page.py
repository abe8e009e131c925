"""The evaluate stage's HTML page for a detector: test images with their true boxes and
the model's detections drawn on them (Pillow), self-contained (images inline), as the
KFP and Vertex AI UIs show an HTML artifact."""

from __future__ import annotations

import base64
import html
import io as _pyio
from collections.abc import Sequence

from PIL import Image, ImageDraw

TRUE_COLOUR = (0, 170, 0)
FOUND_COLOUR = (220, 30, 30)
# The side an image is drawn at (larger ones are scaled down, smaller ones up).
DRAWN_SIDE = 320

# (label, score, [ymin, xmin, ymax, xmax] normalized)
Box = tuple[str, float, Sequence[float]]


def draw_boxes(encoded: bytes, truth: Sequence[Box], found: Sequence[Box]) -> bytes:
    """The image with its true boxes (green) and detections (red, with label and score),
    as JPEG bytes of about ``DRAWN_SIDE`` pixels on its longer side."""
    image = Image.open(_pyio.BytesIO(encoded)).convert("RGB")
    scale = DRAWN_SIDE / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    draw = ImageDraw.Draw(image)
    width, height = image.size

    def rectangle(box: Sequence[float]) -> list[float]:
        ymin, xmin, ymax, xmax = box
        return [xmin * width, ymin * height, xmax * width, ymax * height]

    for _label, _, box in truth:
        draw.rectangle(rectangle(box), outline=TRUE_COLOUR, width=2)
    for label, score, box in found:
        corners = rectangle(box)
        draw.rectangle(corners, outline=FOUND_COLOUR, width=2)
        text = f"{label} {score:.2f}"
        left, top = corners[0], max(0.0, corners[1] - 11)
        draw.rectangle(draw.textbbox((left, top), text), fill=FOUND_COLOUR)
        draw.text((left, top), text, fill=(255, 255, 255))
    out = _pyio.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def render_page(
    examples: Sequence[tuple[bytes, Sequence[Box], Sequence[Box]]],
    title: str,
    min_score: float = 0.3,
) -> str:
    """The page: per example (encoded image, true objects, detections), the drawn image
    and its lists of true and found objects; detections under ``min_score`` are left
    out."""
    cells = []
    for encoded, truth, found in examples:
        shown = [d for d in found if d[1] >= min_score]
        picture = base64.b64encode(draw_boxes(encoded, truth, shown)).decode()
        true_text = ", ".join(label for label, _, _ in truth) or "no object"
        found_text = ", ".join(f"{label} {score:.2f}" for label, score, _ in shown) or "nothing"
        cells.append(
            f'<figure><img src="data:image/jpeg;base64,{picture}" alt="">'
            f"<figcaption><b>true:</b> {html.escape(true_text)}<br>"
            f"<b>found:</b> {html.escape(found_text)}</figcaption></figure>"
        )
    body = "\n".join(cells) or "<p>No image in this split.</p>"
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:16px}"
        "figure{display:inline-block;vertical-align:top;margin:6px;width:330px}"
        "figcaption{font-size:12px}</style></head><body>"
        f"<h2>{html.escape(title)}</h2>"
        f"<p><span style='color:rgb{TRUE_COLOUR}'>&#9632; true boxes</span> &nbsp; "
        f"<span style='color:rgb{FOUND_COLOUR}'>&#9632; detections</span> scoring at least "
        f"{min_score:g}</p>\n{body}\n</body></html>\n"
    )
