"""The batch_predict stage: an exported SavedModel over many images with Beam RunInference."""
