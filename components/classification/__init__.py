"""The image-classification task's own contract (its stages are components/<stage>/)."""
