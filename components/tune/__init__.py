"""The tune stage: a small hyperparameter search before train (KerasTuner, or a Vertex AI
hyperparameter tuning job), off by default."""
