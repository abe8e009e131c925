"""Code that two or more stages share: TFRecord schema, labels, image preprocessing, I/O."""
