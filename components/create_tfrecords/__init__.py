"""The create_tfrecords stage: labelled JPEGs to sharded TFRecords.

``beam_pipeline.run`` is the entry point (an Apache Beam pipeline, DirectRunner or Dataflow),
``component.create_tfrecords`` the KFP component, ``python -m components.create_tfrecords``
the command line. Importing this package imports neither Beam nor TensorFlow.
"""
