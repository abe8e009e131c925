"""The train stage: transfer learning on a keras.applications backbone over TFRecords."""
