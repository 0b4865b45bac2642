"""Tasks: pretraining, classification, GLUE, SQuAD; each gives the trainer its data, loss,
evaluation and export."""
