"""Fine-tuning jobs on the training engine: classification.py (labelled text, the book
task), and what they share: start.py (where the model starts), labelled.py (reading and
tokenizing labelled text), books.py (the bundled book task), steps.py (pure steps)."""
