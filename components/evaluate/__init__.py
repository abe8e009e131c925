"""The evaluate stage: test-split metrics, confusion matrix and the deploy gate."""
