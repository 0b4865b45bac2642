"""GLUE: the tasks' data, metrics, one run and the sweep."""
