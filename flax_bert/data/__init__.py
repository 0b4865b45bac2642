"""Pretraining data: corpus -> WordPiece vocab -> NSP/MLM examples -> shards -> batches.

The front door is `inputs.pretraining_data` (what a run reads, prepared on first use).
Behind it: options (config.data as one value), corpus (streamed reading, sentence
splitting), vocab (WordPiece), split (the held-out documents, by hash), examples (pairs and
masking, pure NumPy), packing (pairs packed into rows: the packer and a packed batch's
arrays), records (one example, or one packed row, as one ArrayRecord record), storage
(local or gs:// paths, checksums), folder (a prepared folder: names, meta.json, integrity
checks), prepare (sharded preparation; CLI `python -m flax_bert.data.prepare`),
beam_prepare (the same as an Apache Beam pipeline), streams (the random streams and the
epoch order) and pipeline (the grain train and eval iterators). This package imports
nothing heavy.
"""
