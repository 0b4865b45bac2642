"""SQuAD v1.1 / v2.0 and the bundled cloze task."""
