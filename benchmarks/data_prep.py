"""Data speed: prepare throughput vs plain `tokenizers` batch-encoding, and the train pipeline.

    python benchmarks/data_prep.py [--input 'data/corpus/*.txt.gz'] [--repeats 3]

Both sides use the same vocab (trained first; its time is printed on its own) and the same
text in the same run. "tokenize" is `Tokenizer.encode_batch` over the corpus sentences
already in memory; "prepare" is the whole `prepare()` with that vocab: read + gunzip +
split + tokenize + pair + write. ratio = tokenize time / prepare time (1.0x = prepare is as
fast as bare tokenization); also against `encode_batch_fast`, which prepare uses. Best of
--repeats for each. Then the train pipeline's
examples/s with dynamic masking (and with whole-word masking) at --batch-size.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from flax_bert.data import corpus, pipeline  # noqa: E402
from flax_bert.data import prepare as prepare_lib, vocab as vocab_lib  # noqa: E402

DEFAULTS = prepare_lib.PrepareOptions()


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", default=DEFAULTS.input[0])
    p.add_argument("--vocab-size", type=int, default=DEFAULTS.vocab_size)
    p.add_argument("--max-seq-length", type=int, default=DEFAULTS.max_seq_length)
    p.add_argument("--num-workers", type=int, default=1, help="prepare workers (0 = all cores)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64, help="train pipeline global batch")
    p.add_argument("--batches", type=int, default=200, help="train batches timed")
    args = p.parse_args()

    paths = corpus.expand_inputs(args.input)
    sentences = [
        s for _, d in corpus.iter_raw_documents(paths, DEFAULTS.input_format, DEFAULTS.text_column)
        for s in corpus.to_sentences(d, DEFAULTS.input_format)
    ]
    n_bytes = sum(len(s.encode()) + 1 for s in sentences)
    print(f"corpus: {len(paths)} files, {len(sentences)} sentences, {n_bytes / 1e6:.2f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        vocab_path = vocab_lib.train_vocab(sentences, args.vocab_size, True, os.path.join(tmp, "v"))
        print(f"vocab training: {time.perf_counter() - t0:.2f} s (not in the ratio)")
        tok = vocab_lib.load_tokenizer(vocab_path, True)
        t_tok = best_time(
            lambda: tok.encode_batch(sentences, add_special_tokens=False), args.repeats
        )
        opts = dataclasses.replace(
            DEFAULTS, input=tuple(paths), vocab=vocab_path, max_seq_length=args.max_seq_length,
            num_workers=args.num_workers,
        )
        out = os.path.join(tmp, "prepared")
        t_prep = best_time(
            lambda: prepare_lib.prepare(opts, out, force=True, progress=False), args.repeats
        )
        print(f"tokenize: {t_tok:.3f} s ({n_bytes / 1e6 / t_tok:.1f} MB/s)")
        print(f"prepare:  {t_prep:.3f} s ({n_bytes / 1e6 / t_prep:.1f} MB/s)")
        print(f"ratio prepare/tokenize: {t_tok / t_prep:.2f}x")
        # prepare itself calls encode_batch_fast (no offsets); the ratio against that too:
        t_fast = best_time(
            lambda: tok.encode_batch_fast(sentences, add_special_tokens=False), args.repeats
        )
        print(f"tokenize (encode_batch_fast): {t_fast:.3f} s; "
              f"ratio prepare/tokenize_fast: {t_fast / t_prep:.2f}x")

        for wwm in (False, True):
            cfg = dataclasses.replace(opts, whole_word_masking=wwm)
            it = pipeline.make_train_iterator(
                out, cfg, global_batch_size=args.batch_size, seed=0, process_index=0,
                process_count=1,
            )
            next(it)  # warm-up: open arrays, start the prefetch thread
            t0 = time.perf_counter()
            for _ in range(args.batches):
                next(it)
            rate = args.batches * args.batch_size / (time.perf_counter() - t0)
            name = "whole-word" if wwm else "dynamic"
            print(f"train pipeline ({name} masking, batch {args.batch_size}): "
                  f"{rate:.0f} examples/s")


if __name__ == "__main__":
    main()
