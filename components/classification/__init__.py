"""The image-classification task's own contract (its stages are components/<stage>/).

* ``schema``: its TFRecord record (the feature keys, ``make_example``, ``parse_examples``);
  where records lie is the layout every task shares, ``components.common.schema``.
* ``signature``: what its export's serving signature takes and answers.
* ``predictions``: its prediction record (top class, top-k) and the check of a served
  answer.
"""
