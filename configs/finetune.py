"""Fine-tuning (`python finetune.py`): every knob of a sequence-classification run, commented.

The default fine-tunes the default pretraining run (`runs/default`) on the book task (which
of the seven books a passage of 1-3 sentences is from; built into WORKDIR/books from the
chapters pretraining held out, see flax_bert/tasks/books.py) in a few minutes on a
2-core CPU. `--config.init.from_scratch=True` trains the same model from random weights:
the baseline. Any field can be overridden on the command line:
      python finetune.py --workdir runs/ft --config.data.train=train.jsonl \
          --config.data.eval=test.jsonl --config.init.checkpoint=runs/base
"""

import ml_collections

from configs import default as pretraining


def held_out_chapters() -> ml_collections.ConfigDict:
    """The fields of a bundled task (the book task, the cloze task) that name the
    pretraining run's corpus and held-out split: they must equal its config.data fields
    (configs/default.py's), so that the task's chapters are exactly those it never trained
    on."""
    data = pretraining.get_config().data
    return ml_collections.ConfigDict({name: data[name] for name in (
        "input", "input_format", "text_column", "eval_fraction", "prepare_seed")})


def get_config() -> ml_collections.ConfigDict:
    pre = pretraining.get_config()
    config = ml_collections.ConfigDict()
    # The job finetune.py runs: classification (this file) | glue (configs/glue.py) |
    # squad (configs/squad.py).
    config.job = "classification"
    config.seed = 0  # Seeds the classifier's (or from scratch: every) init, dropout, order.

    # ---- Where the model starts. -----------------------------------------------------------
    i = config.init = ml_collections.ConfigDict()
    # A pretraining workdir (its newest checkpoint), an export directory, or a Hugging Face
    # BERT directory: its weights, config.json and vocab.txt. "" = none: a new model of
    # config.model with init.vocab, from random weights.
    i.checkpoint = "runs/default"
    # True: init.checkpoint's architecture and vocab, random weights (the from-scratch
    # baseline of the same model).
    i.from_scratch = False
    # A vocab.txt; "" = init.checkpoint's. With a checkpoint it must be the checkpoint's own
    # vocab (same tokens): a model trained on other token ids is refused.
    i.vocab = ""

    # ---- Model when init.checkpoint is "": HF BertConfig field names, as configs/default.py.
    config.model = ml_collections.ConfigDict(pre.model.to_dict())  # vocab_size 0: the vocab's

    # ---- Labelled data. ----------------------------------------------------------------------
    d = config.data = ml_collections.ConfigDict()
    # Train examples: JSONL (one object a line), CSV (header row) or a `datasets`
    # save_to_disk folder. "" = the book task, built into WORKDIR/books (config.books).
    d.train = ""
    d.eval = ""  # Held-out examples, same formats ("" with data.train "": the book task's test).
    d.text_column = "text"
    d.text_pair_column = "text_pair"  # Second text of a pair; absent from the file: single texts.
    d.label_column = "label"  # Any strings or integers; the train file's set is the classes.
    d.lowercase = True  # BertNormalizer lower-casing and accent stripping (the vocab's).
    d.max_seq_length = 128  # Tokens per example with [CLS]/[SEP]; longer texts are cut.

    # ---- The book task (data.train ""): passages from pretraining's held-out chapters. ---
    b = config.books = held_out_chapters()
    b.test_fraction = 0.3  # Of each book's held-out chapters, this fraction go to test.
    b.max_sentences = 3  # Passages are 1..max_sentences consecutive sentences.
    b.seed = 0  # Seeds the passage lengths.

    # ---- Training loop; how the model computes (steps a call, dtype, kernels, layer loop,
    # compilation cache) is pretraining's, configs/default.py, which says what each does. --
    t = config.train = ml_collections.ConfigDict({k: pre.train[k] for k in (
        "steps_per_call", "grad_accum_steps", "dtype", "remat_policy", "dropout_impl",
        "fused_backward", "attention_impl", "scan_layers", "compilation_cache_dir")})
    t.steps = 600  # Optimizer steps.
    t.global_batch_size = 32  # Examples per step, over all hosts and devices.
    t.dropout = 0.1  # Hidden and attention dropout while fine-tuning (BERT's).
    t.log_every = 50  # Steps between training metric rows.
    t.tensorboard = True  # Also write the metric rows as TensorBoard events (tensorboardX).
    t.eval_every = 200  # Steps between evaluations on data.eval (0 = only at the end).
    t.eval_batch_size = 128  # Examples per eval batch.
    t.max_consecutive_nonfinite = 5  # Skipped non-finite steps in a row before stopping.
    t.stop_after = 0  # Save and stop after this step (0 = run to `steps`); rerun to go on.

    # ---- Optimizer: pretraining's (configs/default.py: AdamW, linear warmup then linear
    # decay to 0, clipping), at fine-tuning's rate, warmup and b2. ----------------------------
    o = config.optimizer = ml_collections.ConfigDict(pre.optimizer.to_dict())
    o.learning_rate = 1e-3  # Peak learning rate (a tiny model takes more than BERT's 2e-5).
    o.warmup_steps = 60  # 10% of the steps.
    o.b2 = 0.999  # BERT's.

    config.mesh = pre.mesh  # (data, fsdp, tensor) sizes; -1 takes the rest.
    config.distributed = pre.distributed  # Multi-host, as configs/default.py.

    # ---- Checkpoints (orbax, in WORKDIR/checkpoints) and the export. -------------------------
    c = config.checkpoint = ml_collections.ConfigDict()
    c.every = 200  # Steps between saves; a final save always happens.
    c.keep = 2  # Newest checkpoints kept.
    c.async_save = True  # Save in the background while training continues.
    # A transformers BertForSequenceClassification directory written at the end ("" =
    # WORKDIR/hf): config.json with id2label / label2id, model.safetensors, vocab.txt.
    config.export_dir = ""
    return config
