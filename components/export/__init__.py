"""The export stage: a self-contained serving SavedModel."""
