"""Pretraining data: corpus -> WordPiece vocab -> NSP/MLM examples -> grain pipeline.

Modules: corpus (reading, sentence splitting), vocab (WordPiece), examples (pairs and
masking, pure NumPy), prepare (CLI `python -m flax_bert.data.prepare` and
`prepare_from_config`), pipeline (`load_meta`, `make_train_iterator`,
`make_eval_iterator`). Import the module you need; this package imports nothing heavy.
"""
