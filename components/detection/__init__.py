"""The object detection task: what detection owns, whatever the stage.

* ``boxes``: a labelled box, normalized and clipped to its image, and how EXIF
  orientation moves it.
* ``annotations``: the annotation formats people already have (Pascal VOC XML, COCO JSON,
  Vertex AI's bounding-box JSON Lines) read into one ``ImageAnnotation`` per image, every
  malformed record a rejection with its reason.
* ``schema``: the TFRecord contract, key for key the TF Object Detection API's, and its
  ``label_map.pbtxt``.
* ``coco``: a split's ground truth as COCO JSON, for COCO metrics.
"""
