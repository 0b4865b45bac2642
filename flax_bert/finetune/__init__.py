"""Fine-tuning jobs on the training engine (finetune.py picks one by config.job):
classification.py (labelled text, the book task), glue_runner.py (the GLUE tasks, each a
glue_task.py run), squad_runner.py (SQuAD v1.1 / v2.0, the cloze task). Data: labelled.py,
glue.py (+ glue_metrics.py), squad.py, books.py and cloze.py (the bundled tasks). What the
jobs share: start.py (where the model starts), job.py (the engine Job), batches.py,
steps.py (pure steps), recipe.py (a run's steps from its data), bundled.py."""
