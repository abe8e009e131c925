"""The export_edge stage: TFLite and TensorFlow.js models of the export, checked against it."""
