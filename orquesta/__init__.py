"""The composition root: the ``orq`` command and ``orq dev``, above the services they start (``shared`` below
them knows none of them)."""
