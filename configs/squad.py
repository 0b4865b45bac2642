"""SQuAD v1.1 / v2.0 (`python finetune.py --config configs/squad.py`): extractive question
answering, doc-stride windows, n-best answers, the official EM / F1.

With no data given it fine-tunes the default pretraining run (`runs/default`) on the cloze
task, built into WORKDIR/cloze from the chapters pretraining held out (find in a passage the
word blanked out of the next sentence; flax_bert/tasks/squad/cloze.py), in a few minutes on a
2-core CPU; `--config.init.from_scratch=True` is the same model from random weights. The
other fields are configs/finetune.py's (init, model, train, optimizer, mesh, checkpoint),
with the changes below. SQuAD itself, with BERT's recipe for a BERT-base model:
      python finetune.py --config configs/squad.py --workdir runs/squad \
          --config.init.checkpoint=BERT_DIR --config.data.train=train-v1.1.json \
          --config.data.eval=dev-v1.1.json --config.data.max_seq_length=384 \
          --config.squad.doc_stride=128 --config.squad.max_query_length=64 \
          --config.train.steps=0 --config.train.epochs=2 --config.optimizer.learning_rate=3e-5
(v2.0: train-v2.0.json, dev-v2.0.json and --config.squad.version_2=True.)
"""

import ml_collections

from configs import finetune


def get_config() -> ml_collections.ConfigDict:
    config = finetune.get_config()
    config.job = "squad"
    del config.books

    # ---- Data: SQuAD-format JSON files (data > paragraphs > context, qas). ---------------
    d = config.data = ml_collections.ConfigDict()
    d.train = ""  # "" (with data.eval ""): the cloze task, built into WORKDIR/cloze.
    d.eval = ""  # Scored with the official script's EM and F1 (v2.0: also HasAns / NoAns).
    d.lowercase = True  # BertNormalizer lower-casing and accent stripping (the vocab's).
    # Tokens a window, [CLS] question [SEP] context [SEP] (SQuAD with BERT-base: 384). 128:
    # the length the default run pretrained at (its later positions are barely trained).
    d.max_seq_length = 128

    s = config.squad = ml_collections.ConfigDict()
    # v2.0: questions without an answer (is_impossible) score right when the model
    # predicts none ([CLS]'s score beats every span's by null_score_diff_threshold).
    s.version_2 = False
    s.doc_stride = 32  # Context tokens consecutive windows share (BERT-base: 128).
    s.max_query_length = 40  # Question tokens kept (BERT-base: 64).
    s.n_best_size = 20  # Best starts x best ends searched a window; spans kept a question.
    s.max_answer_length = 30  # Tokens an answer may span.
    s.null_score_diff_threshold = 0.0  # v2.0: answer "" when null - best span > this.

    # ---- The cloze task (data.train ""): from pretraining's held-out chapters. -----------
    c = config.cloze = finetune.held_out_chapters()  # input, eval_fraction, prepare_seed, ...
    c.dev_fraction = 0.2  # Of each book's held-out chapters, this fraction go to dev.
    c.min_sentences = 3  # A passage is min..max sentences before the question's (drawn) ...
    c.max_sentences = 10
    # ... less its earliest ones while over this many words (100: a passage fills one or
    # two 128-token windows beside its question; 3,791 windows for 2,273 train questions) ...
    c.max_passage_words = 100
    c.min_passage_sentences = 1  # (a question whose passage gets shorter is skipped).
    # Only a word among a sentence's first this many is blanked, so that the blank stays in
    # the question when it is cut to squad.max_query_length tokens.
    c.max_blank_position = 30
    c.min_word_length = 3  # Letters in a blanked word (never a stop word).
    c.blanks_per_sentence = 8  # Questions a sentence gives at most (distinct words).
    # Replaces the blanked word in the question: BERT's mask token (the tokenizer reads it
    # as [MASK], as transformers' does), so that a question is a masked-LM input.
    c.placeholder = "[MASK]"
    c.seed = 0  # Seeds the passage lengths and the blanked words.

    # ---- Training. ----------------------------------------------------------------------------
    t = config.train
    # Optimizer steps; 0: train.epochs over the train windows. 150 (~1.3 epochs of the cloze
    # task's 3,791 train windows, 2-3 min on a 2-core CPU): the pretrained start is near its
    # best by then, while the scratch model gains with more (dev EM at 300 steps: 15.6
    # pretrained, 13.3 from scratch; at 150: 15.7 and 11.9).
    t.steps = 150
    t.epochs = 2.0  # Passes over the train windows when train.steps is 0 (BERT's 2).
    t.global_batch_size = 32
    t.eval_every = 50  # Steps between dev evaluations (0 = only at the end).
    t.eval_batch_size = 128

    o = config.optimizer
    # Peak (a tiny model takes more than BERT-base's 3e-5). The pretrained start's dev EM
    # after 300 steps: 14.2 at 2e-4, 15.6 at 5e-4, 14.3 at 1e-3.
    o.learning_rate = 5e-4
    del o.warmup_steps
    o.warmup_fraction = 0.1  # Of the steps: linear warmup, then linear decay to 0.

    config.checkpoint.every = 50
    # A transformers BertForQuestionAnswering directory written at the end ("" = WORKDIR/hf).
    config.export_dir = ""
    return config
