"""Code that two or more stages share, whatever the task: the dataset layout, labels, image
preprocessing, I/O. A task's own contract is in its folder (``components.classification``,
``components.detection``)."""
