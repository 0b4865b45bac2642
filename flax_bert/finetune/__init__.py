"""Fine-tuning a BERT encoder on labelled text: data, the book task, steps, the loop."""
