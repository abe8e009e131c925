"""Streaming prediction: Pub/Sub messages in, a prediction message per image out (Beam)."""
