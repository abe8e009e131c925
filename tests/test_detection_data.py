"""Tests of the detection task's data contract: boxes (normalized, clipped, rejected, turned
with EXIF orientation as Pillow turns the pixels), the three annotation formats, the
Object Detection API's record keys and label map, and COCO ground truth."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.create_tfrecords.image_checks import check_image
from components.detection import annotations, boxes, coco, schema
from components.detection.annotations import AnnotationRejected, RawBox
from components.detection.boxes import Box, BoxRejected, ImageBoxesRejected

# --------------------------------------------------------------------------- boxes


def test_normalized_box_from_pixels_and_clipping():
    box, clipped = boxes.normalized_box("car", 10, 20, 50, 60, width=100, height=80)
    assert box == Box("car", 0.1, 0.25, 0.5, 0.75) and not clipped
    box, clipped = boxes.normalized_box("car", -5, 70, 120, 90, width=100, height=80, difficult=1)
    assert box == Box("car", 0.0, 70 / 80, 1.0, 1.0, difficult=1) and clipped
    box, clipped = boxes.normalized_box("car", "0.2", "0.3", "0.4", "0.5")  # normalized, text
    assert box == Box("car", 0.2, 0.3, 0.4, 0.5) and not clipped


@pytest.mark.parametrize(
    "corners, message",
    [
        ((50, 20, 10, 60), "inverted"),
        ((10, 60, 50, 20), "inverted"),
        ((10, 20, 10, 60), "zero area"),
        ((10, 20, 50, 20), "zero area"),
        ((120, 10, 130, 20), "outside"),
        ((-30, -20, -10, -5), "outside"),
        (("ten", 20, 50, 60), "not a number"),
        ((float("nan"), 20, 50, 60), "not a finite number"),
        ((None, 20, 50, 60), "not a number"),
    ],
)
def test_what_is_not_a_box_is_rejected(corners, message):
    with pytest.raises(BoxRejected, match=message) as e:
        boxes.normalized_box("car", *corners, width=100, height=80)
    assert e.value.reason == boxes.INVALID_BOX


def _marked_jpeg(size: tuple[int, int], box: tuple[int, int, int, int], orientation: int) -> bytes:
    """A black image with a white rectangle on ``box`` (pixels of the stored image), its
    EXIF orientation set."""
    image = Image.new("RGB", size)
    image.paste((255, 255, 255), box)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


def _white_box(data: bytes) -> tuple[float, float, float, float]:
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L")) > 128
    rows, cols = np.where(pixels.any(axis=1))[0], np.where(pixels.any(axis=0))[0]
    height, width = pixels.shape
    return cols[0] / width, rows[0] / height, (cols[-1] + 1) / width, (rows[-1] + 1) / height


@pytest.mark.parametrize("orientation", range(1, 9))
def test_boxes_follow_the_pixels_through_exif_orientation(orientation):
    """The stored image is turned upright (image_checks, Pillow's exif_transpose); the box,
    annotated on the file's pixels, lands on the same pixels of the upright image."""
    size, marked = (96, 64), (12, 8, 40, 24)
    checked = check_image(_marked_jpeg(size, marked, orientation))
    assert checked.orientation == orientation and checked.original_size == size
    upright = (64, 96) if orientation in boxes.TRANSPOSING else (96, 64)
    assert (checked.width, checked.height) == upright
    raw = RawBox("mark", *marked)
    (box,), clipped = boxes.image_boxes([raw], False, size, size, orientation, {"mark"})
    assert clipped == 0
    found = _white_box(checked.encoded)
    assert (box.xmin, box.ymin, box.xmax, box.ymax) == pytest.approx(found, abs=1.5 / 64)


def test_an_annotation_drawn_on_the_upright_image_is_not_turned_again():
    """A declared size equal to the upright image's (a tool that applied EXIF first) means
    the boxes are already upright."""
    raw = RawBox("mark", 8, 12, 24, 40)  # on the 64x96 upright image
    (box,), _ = boxes.image_boxes([raw], False, (64, 96), (96, 64), 6, {"mark"})
    assert box == Box("mark", 8 / 64, 12 / 96, 24 / 64, 40 / 96)
    (box,), _ = boxes.image_boxes([raw], False, (96, 64), (96, 64), 6, {"mark"})
    assert box != Box("mark", 8 / 96, 12 / 64, 24 / 96, 40 / 64)  # stored frame: turned


def test_image_boxes_rejects_unknown_classes_bad_boxes_and_other_sizes():
    good = RawBox("car", 1, 1, 5, 5)
    with pytest.raises(ImageBoxesRejected, match="'bus' is not one of") as e:
        boxes.image_boxes([good, RawBox("bus", 1, 1, 2, 2)], False, (0, 0), (10, 10), 1, {"car"})
    assert e.value.reason == boxes.UNKNOWN_CLASS
    with pytest.raises(ImageBoxesRejected, match="inverted") as e:
        boxes.image_boxes([RawBox("car", 5, 1, 1, 5)], False, (0, 0), (10, 10), 1, {"car"})
    assert e.value.reason == boxes.INVALID_BOX
    with pytest.raises(ImageBoxesRejected, match="for a 20x10 image, the file is 10x10") as e:
        boxes.image_boxes([good], False, (20, 10), (10, 10), 1, {"car"})
    assert e.value.reason == boxes.SIZE_MISMATCH
    assert boxes.image_boxes([], False, (10, 10), (10, 10), 1, {"car"}) == ((), 0)
    # No declared size: the file's own; normalized corners need none.
    (box,), clipped = boxes.image_boxes(
        [RawBox("car", 0.5, 0.5, 1.2, 0.9)], True, (0, 0), (7, 3), 1, {"car"}
    )
    assert box == Box("car", 0.5, 0.5, 1.0, 0.9) and clipped == 1


# --------------------------------------------------------------------------- VOC

LABELIMG_XML = b"""<annotation>
    <folder>JPEGImages</folder>
    <filename>dog_001.jpg</filename>
    <path>C:\\Users\\someone\\voc\\JPEGImages\\dog_001.jpg</path>
    <source><database>Unknown</database></source>
    <size><width>500</width><height>375</height><depth>3</depth></size>
    <segmented>0</segmented>
    <object>
        <name>dog</name><pose>Unspecified</pose><truncated>1</truncated><difficult>0</difficult>
        <bndbox><xmin>48</xmin><ymin>240</ymin><xmax>195</xmax><ymax>371</ymax></bndbox>
    </object>
    <object>
        <name>person</name><pose>Left</pose><truncated>0</truncated><difficult>1</difficult>
        <bndbox><xmin>8.5</xmin><ymin>12</ymin><xmax>352.25</xmax><ymax>375</ymax></bndbox>
    </object>
</annotation>"""


def test_voc_annotation_as_labelimg_and_cvat_write_it():
    ann = annotations.parse_voc(LABELIMG_XML, "/voc/Annotations/dog_001.xml", "/voc")
    assert ann.uri == "/voc/JPEGImages/dog_001.jpg"  # <path> on the annotator's machine ignored
    assert ann.size == (500, 375) and not ann.normalized and ann.split == ""
    assert ann.boxes == (
        RawBox("dog", "48", "240", "195", "371", difficult=0, truncated=1, view=""),
        RawBox("person", "8.5", "12", "352.25", "375", difficult=1, truncated=0, view="Left"),
    )
    (dog, person), clipped = boxes.image_boxes(
        ann.boxes, False, ann.size, (500, 375), 1, {"dog", "person"}
    )
    # As the Object Detection API's create_pascal_tf_record.py: pixel / size, no -1.
    assert dog == Box("dog", 48 / 500, 240 / 375, 195 / 500, 371 / 375, truncated=1)
    assert person.difficult == 1 and person.view == "Left" and clipped == 0


def test_voc_without_objects_is_a_negative_and_gs_paths_join():
    xml = b"<annotation><filename>empty.jpg</filename><size><width>0</width><height>0</height></size></annotation>"
    ann = annotations.parse_voc(xml, "gs://b/voc/Annotations/empty.xml", "gs://b/voc")
    assert ann == annotations.ImageAnnotation(
        "gs://b/voc/JPEGImages/empty.jpg", (), False, (0, 0), "gs://b/voc/Annotations/empty.xml"
    )


@pytest.mark.parametrize(
    "xml, uri, message",
    [
        (b"<annotation><filename>a.jpg</filename>", "src.xml", "not well-formed XML"),
        (b"<annotation><size/></annotation>", "src.xml", "no <annotation><filename>"),
        (b"<html><filename>a.jpg</filename></html>", "src.xml", "not a VOC annotation"),
        (
            b"<annotation><filename>a.jpg</filename><object><name>dog</name></object></annotation>",
            "/voc/JPEGImages/a.jpg",
            "object 0 has no <name> or <bndbox>",
        ),
        (
            b"<annotation><filename>a.jpg</filename><object><bndbox><xmin>1</xmin><ymin>1</ymin>"
            b"<xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>",
            "/voc/JPEGImages/a.jpg",
            "object 0 has no <name>",
        ),
    ],
)
def test_malformed_voc_is_rejected_with_the_image_it_names(xml, uri, message):
    with pytest.raises(AnnotationRejected, match=message) as e:
        annotations.parse_voc(xml, "src.xml", "/voc")
    assert (e.value.uri, e.value.reason) == (uri, annotations.MALFORMED_ANNOTATION)


def test_voc_split_lists():
    lists = {"trainval": "a\nb\n", "val": "b 1\n", "test": "c\n", "dog_trainval": "a 1\n"}
    assert annotations.voc_splits(lists) == {"a": "train", "b": "valid", "c": "test"}
    ann = annotations.ImageAnnotation("/voc/JPEGImages/a.b.jpg", (), False, (0, 0), "x")
    assert annotations.voc_image_id(ann) == "a.b"


# --------------------------------------------------------------------------- COCO


def coco_json(**changes) -> bytes:
    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 640, "height": 480},
            {"id": 7, "file_name": "sub/b.jpg", "width": 100, "height": 100},
            {"id": 9, "file_name": "gs://other/c.jpg"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 5, "bbox": [0.5, 0, 100, 50.5], "iscrowd": 1},
        ],
        "categories": [{"id": 3, "name": "car"}, {"id": 5, "name": "person"}],
    }
    data.update(changes)
    return json.dumps(data).encode()


def test_coco_images_with_and_without_boxes():
    parsed = list(annotations.parse_coco(coco_json(), "/d/coco.json", "/d/images"))
    assert parsed == [
        annotations.ImageAnnotation(
            "/d/images/a.jpg",
            (RawBox("car", 10, 20, 40, 60), RawBox("person", 0.5, 0, 100.5, 50.5, is_crowd=1)),
            False,
            (640, 480),
            "/d/coco.json#1",
        ),
        annotations.ImageAnnotation("/d/images/sub/b.jpg", (), False, (100, 100), "/d/coco.json#7"),
        annotations.ImageAnnotation("gs://other/c.jpg", (), False, (0, 0), "/d/coco.json#9"),
    ]


def test_coco_records_that_cannot_be_read_are_rejected_one_by_one():
    data = coco_json(
        images=[
            {"id": 1, "file_name": "a.jpg"},
            {"id": 2, "file_name": "b.jpg"},
            {"id": 3, "file_name": "c.jpg"},
            {"file_name": "no_id.jpg"},
        ],
        annotations=[
            {"image_id": 1, "category_id": 99, "bbox": [1, 1, 2, 2]},
            {"image_id": 2, "category_id": 3, "bbox": [1, 1, 2]},
            {"image_id": 42, "category_id": 3, "bbox": [1, 1, 2, 2]},
            {"image_id": 3, "category_id": 3, "bbox": [1, 1, 2, 2]},
        ],
    )
    parsed = list(annotations.parse_coco(data, "c.json", "/i"))
    rejected = {p.uri: p.detail for p in parsed if isinstance(p, AnnotationRejected)}
    assert set(rejected) == {"c.json#images[3]", "c.json#annotations[2]", "/i/a.jpg", "/i/b.jpg"}
    assert "category_id 99 is not in 'categories'" in rejected["/i/a.jpg"]
    assert "is not [x, y, width, height]" in rejected["/i/b.jpg"]
    assert "image_id 42" in rejected["c.json#annotations[2]"]
    kept = [p for p in parsed if not isinstance(p, AnnotationRejected)]
    assert [(k.uri, len(k.boxes)) for k in kept] == [("/i/c.jpg", 1)]


def test_a_file_that_is_not_coco_json_fails_clearly():
    with pytest.raises(ValueError, match="c.json is not valid JSON"):
        list(annotations.parse_coco(b"{nope", "c.json", "/i"))
    with pytest.raises(ValueError, match="c.json is not COCO JSON: no 'images' list"):
        list(annotations.parse_coco(b'{"images": 3}', "c.json", "/i"))


# --------------------------------------------------------------------------- Vertex AI


def test_vertex_jsonl_line():
    line = json.dumps(
        {
            "imageGcsUri": "gs://b/img/1.jpg",
            "boundingBoxAnnotations": [
                {"displayName": "cat", "xMin": 0.1, "xMax": 0.5, "yMin": 0.2, "yMax": 0.6},
            ],
            "dataItemResourceLabels": {"aiplatform.googleapis.com/ml_use": "validation"},
        }
    )
    ann = annotations.parse_vertex_line(line, "gs://b/import.jsonl:3")
    assert ann == annotations.ImageAnnotation(
        "gs://b/img/1.jpg",
        (RawBox("cat", 0.1, 0.2, 0.5, 0.6),),
        True,
        (0, 0),
        "gs://b/import.jsonl:3",
        "valid",
    )
    negative = annotations.parse_vertex_line('{"imageGcsUri": "gs://b/2.jpg"}', "f:4")
    assert negative.boxes == () and negative.split == ""
    assert annotations.parse_vertex_line("  \n", "f:5") is None


@pytest.mark.parametrize(
    "line, uri, message",
    [
        ("{not json", "f:1", "not a JSON line"),
        ('{"boundingBoxAnnotations": []}', "f:1", "no 'imageGcsUri'"),
        ('["gs://b/1.jpg"]', "f:1", "no 'imageGcsUri'"),
        (
            '{"imageGcsUri": "gs://b/1.jpg", "boundingBoxAnnotations": {}}',
            "gs://b/1.jpg",
            "is not a list",
        ),
        (
            '{"imageGcsUri": "gs://b/1.jpg", "boundingBoxAnnotations": [{"displayName": "cat", "xMin": 0.1}]}',
            "gs://b/1.jpg",
            "box 0 lacks",
        ),
    ],
)
def test_malformed_vertex_lines_are_rejected(line, uri, message):
    with pytest.raises(AnnotationRejected, match=message) as e:
        annotations.parse_vertex_line(line, "f:1")
    assert e.value.uri == uri


# --------------------------------------------------------------------------- records, label map, COCO


OD_API_KEYS = {  # create_pascal_tf_record.py's keys, plus create_coco_tf_record.py's area/is_crowd
    "image/height",
    "image/width",
    "image/filename",
    "image/source_id",
    "image/key/sha256",
    "image/encoded",
    "image/format",
    "image/object/bbox/xmin",
    "image/object/bbox/xmax",
    "image/object/bbox/ymin",
    "image/object/bbox/ymax",
    "image/object/class/text",
    "image/object/class/label",
    "image/object/difficult",
    "image/object/truncated",
    "image/object/view",
    "image/object/area",
    "image/object/is_crowd",
}


def test_records_have_the_object_detection_api_keys_and_round_trip():
    objects = [
        Box("dog", 0.1, 0.2, 0.5, 0.6, truncated=1),
        Box("cat", 0.0, 0.5, 1.0, 1.0, 1, 0, "Left", 1),
    ]
    ids = schema.class_ids(["cat", "dog"])
    serialized = schema.make_example(
        b"jpeg-bytes", "gs://b/x.jpg", 200, 100, "ab" * 32, objects, ids
    )
    example = tf.train.Example.FromString(serialized)
    assert set(example.features.feature) == OD_API_KEYS
    parsed = schema.parse_example(tf.constant(serialized))
    assert parsed[schema.SOURCE_ID].numpy() == parsed[schema.FILENAME].numpy() == b"gs://b/x.jpg"
    assert (int(parsed[schema.HEIGHT]), int(parsed[schema.WIDTH])) == (200, 100)
    assert parsed[schema.CLASS_LABEL].numpy().tolist() == [2, 1]  # From 1, label-map order.
    assert parsed[schema.CLASS_TEXT].numpy().tolist() == [b"dog", b"cat"]
    np.testing.assert_allclose(parsed[schema.XMIN].numpy(), [0.1, 0.0])
    np.testing.assert_allclose(parsed[schema.YMAX].numpy(), [0.6, 1.0])
    np.testing.assert_allclose(
        parsed[schema.AREA].numpy(), [0.4 * 100 * 0.4 * 200, 100 * 0.5 * 200]
    )
    assert parsed[schema.DIFFICULT].numpy().tolist() == [0, 1]
    assert parsed[schema.TRUNCATED].numpy().tolist() == [1, 0]
    assert parsed[schema.VIEW].numpy().tolist() == [b"", b"Left"]
    assert parsed[schema.IS_CROWD].numpy().tolist() == [0, 1]
    negative = schema.parse_example(
        tf.constant(schema.make_example(b"j", "n.jpg", 5, 5, "00", [], ids))
    )
    assert negative[schema.XMIN].shape == (0,) and negative[schema.CLASS_LABEL].shape == (0,)


def test_label_map_round_trip_and_the_object_detection_api_style():
    labels = ["cat", 'say "hi"', "back\\slash"]
    text = schema.label_map_text(labels)
    assert text.startswith('item {\n  id: 1\n  name: "cat"\n')
    assert schema.parse_label_map(text) == labels
    # As the Object Detection API ships them: single quotes, name after id or before.
    od_api = "item {\n  name: 'dog'\n  id: 2\n}\nitem {\n  id: 1\n  name: 'cat'\n  display_name: 'Cat'\n}\n"
    assert schema.parse_label_map(od_api) == ["cat", "dog"]
    with pytest.raises(ValueError, match="ids must be 1..2"):
        schema.parse_label_map("item { id: 1 name: 'a' } item { id: 3 name: 'b' }")
    with pytest.raises(ValueError, match="needs an id and a name"):
        schema.parse_label_map("item { name: 'a' }")
    with pytest.raises(ValueError, match="given twice"):
        schema.parse_label_map("item { id: 1 name: 'a' } item { id: 1 name: 'b' }")


def test_coco_ground_truth_by_hand():
    images = [
        ("/i/b.jpg", 100, 200, [Box("dog", 0.25, 0.5, 0.75, 1.0, is_crowd=1)]),
        ("/i/a.jpg", 10, 10, []),
    ]
    truth = coco.ground_truth(images, ["cat", "dog"])
    assert truth["images"] == [
        {"id": 1, "file_name": "/i/a.jpg", "height": 10, "width": 10},
        {"id": 2, "file_name": "/i/b.jpg", "height": 100, "width": 200},
    ]
    (ann,) = truth["annotations"]
    assert ann["image_id"] == 2 and ann["category_id"] == 2 and ann["iscrowd"] == 1
    assert ann["bbox"] == pytest.approx([50, 50, 100, 50])  # x, y, w, h in pixels
    assert math.isclose(ann["area"], 100 * 50)
    assert truth["categories"] == [
        {"id": 1, "name": "cat", "supercategory": ""},
        {"id": 2, "name": "dog", "supercategory": ""},
    ]
