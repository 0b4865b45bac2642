"""Pretraining data: corpus -> WordPiece vocab -> NSP/MLM examples -> grain pipeline.

Modules: corpus (streamed reading, sentence splitting), vocab (WordPiece), split (the
held-out documents, by hash), examples (pairs and masking, pure NumPy), records (one
example as one ArrayRecord record), storage (local or gs:// paths, checksums), prepared
(the prepared folder: names, meta.json, integrity checks), prepare (sharded prepare, CLI
`python -m flax_bert.data.prepare`, `prepare_from_config`), beam_prepare (the same as an
Apache Beam pipeline), pipeline (`load_meta`, `make_train_iterator`, `make_eval_iterator`).
Import the module you need; this package imports nothing heavy.
"""
