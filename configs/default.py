"""The default run (`python train.py`): every knob of a pretraining run, commented.

It pretrains a BERT-Tiny-sized model (L2/H128/A2) on the bundled corpus in ~14 minutes on
a 2-core CPU on a slow day (see README), to held-out MLM accuracy ~0.31 and NSP ~0.75: no
dropout (the corpus is seen only a few times), small batches and a high learning rate to
get the most optimizer steps out of the budget, and a short-sequence first phase. The size
files (tiny.py, mini.py, ...) start from here and set a published BERT size with the
papers' recipe.
Any field can be overridden on the command line:
      python train.py --config configs/tiny.py --config.train.steps=200
Every numeric field's range is in flax_bert/config_ranges.py (a new field needs an entry);
a run checks them all before it prepares data or uses a device.
"""

import dataclasses
import os

import ml_collections

from flax_bert.data.config import DataOptions

# The bundled corpus (corpus/README.md): seven novels, one gzip'd file each.
BUNDLED_CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "corpus", "*.txt.gz")


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # Seeds params init, dropout and the data pipeline.

    # ---- Model: field names are exactly HF's BertConfig / config.json names. -------------
    m = config.model = ml_collections.ConfigDict()
    m.vocab_size = 0  # 0: the prepared data's vocab size (30522 with BERT's vocab.txt).
    m.hidden_size = 128
    m.num_hidden_layers = 2
    m.num_attention_heads = 2
    m.intermediate_size = 512
    m.hidden_act = "gelu"  # gelu (erf), gelu_new / gelu_pytorch_tanh (tanh), relu, silu.
    m.hidden_dropout_prob = 0.0  # The size files use BERT's 0.1.
    m.attention_probs_dropout_prob = 0.0
    m.max_position_embeddings = 512
    m.type_vocab_size = 2
    m.initializer_range = 0.02
    m.layer_norm_eps = 1e-12
    m.pad_token_id = 0

    # ---- Data: corpus -> prepared shards -> grain pipeline. --------------------------------
    # Every field with its default and what it does: flax_bert/data/config.py (DataOptions).
    # The default run reads the bundled corpus, found from this file (not the working
    # folder); a relative --config.data.input is read from the working folder.
    # input: files/globs (comma separated) or a `datasets` dir.
    config.data = ml_collections.ConfigDict(
        {**dataclasses.asdict(DataOptions()), "input": BUNDLED_CORPUS})

    # ---- Training loop. -------------------------------------------------------------------
    t = config.train = ml_collections.ConfigDict()
    t.steps = 4500  # Optimizer steps, both phases.
    # Examples per optimizer step, over all hosts and devices (rows when data.packing).
    t.global_batch_size = 28
    # Two phases, as BERT trained (128 tokens for 90% of the steps, then 512): the first
    # phase1_fraction of the steps use examples of phase1_seq_length tokens (prepared next
    # to the main data, same vocab and held-out documents) at phase1_batch_size; the rest
    # use data.max_seq_length. Short examples get a small BERT off the plateau where it
    # predicts only frequent tokens (attention over 32 positions finds a word's
    # neighbours sooner than over 128), at a quarter of the cost per example.
    t.phase1_fraction = 0.4  # 0: one phase at data.max_seq_length.
    t.phase1_seq_length = 32
    t.phase1_batch_size = 48  # Examples (rows when data.packing) per phase-1 step.
    t.grad_accum_steps = 1  # Micro-batches per optimizer step (global batch split this way).
    # Optimizer steps per jit'd call, a lax.scan over that many batches (BERT's
    # iterations_per_loop). Logs, evals, checkpoints, the phase switch and preemption act
    # between calls (a call is cut short to end on each of their steps). Fewer calls: less
    # dispatch, and XLA:CPU faults a step's temporary buffers in once per call, not per step.
    t.steps_per_call = 4
    t.dtype = "float32"  # Compute dtype: float32 | bfloat16 (params stay float32).
    t.remat_policy = "none"  # none | nothing_saveable | dots_saveable (per encoder layer).
    # Dropout keep-mask bits: "hash" (an integer hash of the element index and a key drawn
    # from the dropout RNG, fused into the consumer: ~free) or "jax" (nn.Dropout's
    # jax.random.bernoulli on threefry: ~25% of a CPU train step at BERT-Small, seq 128).
    t.dropout_impl = "hash"
    # Hand-written backward passes of the MLM decoder and the cross-entropy (flax_bert/ops.py:
    # faster on XLA:CPU); False: plain autodiff, the same numbers.
    t.fused_backward = True
    # Attention where its probabilities are not needed (no attention dropout in training, no
    # `attentions` probe): "auto" runs jax.nn.dot_product_attention as cuDNN flash attention
    # on a GPU where eligible (bfloat16/float16, head size a multiple of 8 up to 128), else
    # XLA's path (packed rows too: jax's cuDNN path takes their block-diagonal mask only as
    # a bias); "xla" / "cudnn" force one ("cudnn": a GPU, a 16-bit dtype, unpacked rows
    # right-padded); "explicit" always materialises the [B, N, S, S] scores. ops.py.
    t.attention_impl = "auto"
    # The encoder's layers (params stacked [L, ...] either way): "scan" runs them as one
    # nn.scan, so one layer is compiled once whatever L (BERT-base compiles ~2x, large ~5x
    # faster); "unroll" unrolls the same scan (XLA may then fuse across layers; on the CPU
    # remat then saves no memory); "auto" is "unroll" on the CPU without remat (BERT-Small's
    # step ~5% faster) and "scan" otherwise. flax_bert/ops.py.
    t.scan_layers = "auto"
    # Persistent compilation cache (jax_compilation_cache_dir): a rerun or resume loads the
    # compiled train/eval steps instead of compiling them again. A relative path is inside
    # the workdir; an absolute one (e.g. ~/.cache/flax_bert/jax) can be shared by runs of
    # the same programs; "" turns it off; JAX_COMPILATION_CACHE_DIR, if set, wins. Set by
    # train.py before the first compile.
    t.compilation_cache_dir = "jax_cache"
    t.log_every = 100  # Steps between training metric rows (host sync only then).
    t.tensorboard = True  # Also write the metric rows as TensorBoard events (tensorboardX).
    t.eval_every = 1000  # Steps between evaluations on the held-out split (0 = only at end).
    # Batches of each periodic evaluation: a fixed subset (the first batches of the
    # held-out split), a curve point at a fraction of the cost; 0 = the whole split. 40 of
    # the bundled corpus's 265 held-out batches (1,120 of 7,400 pairs) take ~1/7 of a
    # whole-split eval.
    t.eval_batches = 40
    # Batches of the final evaluation (the run's result, the README's figures): 0 = the
    # whole held-out split.
    t.final_eval_batches = 0
    t.max_consecutive_nonfinite = 5  # Skipped non-finite steps in a row before stopping.
    t.stop_after = 0  # Save and stop after this step (0 = run to `steps`); rerun to go on.

    # ---- Optimizer (optax). -----------------------------------------------------------------
    o = config.optimizer = ml_collections.ConfigDict()
    o.name = "adamw"  # adamw | lamb.
    o.learning_rate = 2e-3  # Peak learning rate.
    o.warmup_steps = 300  # Linear warmup from 0 to the peak.
    o.decay = "linear"  # linear | cosine | constant, from the peak to end_lr_fraction*peak.
    o.end_lr_fraction = 0.0
    o.b1 = 0.9
    o.b2 = 0.98  # RoBERTa's: steadier at a high learning rate than BERT's 0.999.
    o.eps = 1e-6
    o.weight_decay = 0.01  # Not applied to LayerNorm parameters and biases.
    o.grad_clip_norm = 1.0  # Global-norm clipping (0 disables).

    # ---- Device mesh: sizes of the (data, fsdp, tensor) axes; -1 takes the rest. --------
    mesh = config.mesh = ml_collections.ConfigDict()
    mesh.data = -1
    mesh.fsdp = 1
    mesh.tensor = 1

    # ---- Multi-host: used when num_processes > 1 (or coordinator_address is set). --------
    dist = config.distributed = ml_collections.ConfigDict()
    dist.coordinator_address = ""  # host:port of process 0; "" = auto-detect / single host.
    dist.num_processes = 1
    dist.process_id = 0

    # ---- Checkpoints (orbax, in WORKDIR/checkpoints). -------------------------------------
    c = config.checkpoint = ml_collections.ConfigDict()
    c.every = 500  # Steps between saves; a final save always happens.
    c.keep = 3  # Newest checkpoints kept.
    c.async_save = True  # Save in the background while training continues.

    return config


def with_size(config: ml_collections.ConfigDict, layers: int, hidden: int,
              heads: int) -> ml_collections.ConfigDict:
    """A published BERT size with the papers' recipe: feed-forward width 4 * hidden,
    dropout 0.1; 1M steps of ~256 sentence pairs, 90% of them at 128 tokens then 10% at 512
    (google-research/bert's README), Adam lr 1e-4 with 10k warmup steps, linear decay
    (Devlin et al. 2018; Turc et al. 2019 use it for every size); packed (at most 3 pairs a
    row, as NVIDIA's and Graphcore's BERT), so the batch sizes count rows: 224 rows at 128
    and 128 rows at 512 hold ~250 pairs on encyclopedia-like text (1.12 and 1.96 pairs a
    row, benchmarks/make_corpora.py --short-docs; novels' longer documents fill rows with
    fewer: 1.02 and 1.11), which keeps BERT's learning-rate schedule meaningful."""
    m, d, t, o, c = config.model, config.data, config.train, config.optimizer, config.checkpoint
    d.eval_fraction = 0.01
    d.max_seq_length, d.max_predictions_per_seq = 512, 80  # 20 at 128 in phase 1 (scaled)
    d.packing, d.max_pairs_per_row = True, 3
    m.num_hidden_layers, m.hidden_size, m.num_attention_heads = layers, hidden, heads
    m.intermediate_size = 4 * hidden
    m.hidden_dropout_prob = m.attention_probs_dropout_prob = 0.1
    t.steps, t.eval_every, t.eval_batches = 1_000_000, 10_000, 100
    t.phase1_fraction, t.phase1_seq_length = 0.9, 128
    t.phase1_batch_size, t.global_batch_size = 224, 128  # rows (packed)
    t.log_every = 1000
    o.learning_rate, o.warmup_steps, o.b2 = 1e-4, 10_000, 0.999
    c.every = 10_000
    return config
