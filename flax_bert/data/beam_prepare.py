"""Prepare as an Apache Beam pipeline: the same per-shard functions, on many machines.

    pip install -e ".[beam]"
    python -m flax_bert.data.beam_prepare --input 'corpus/*.txt.gz' --output /tmp/prep \
        --vocab vocab.txt --runner DirectRunner --direct_num_workers 2 \
        --direct_running_mode multi_processing
    python -m flax_bert.data.beam_prepare --input 'gs://b/text/*.txt' --output gs://b/prep \
        --vocab gs://b/vocab.txt --runner DataflowRunner --project P --region R \
        --temp_location gs://b/tmp      # or FlinkRunner / SparkRunner with their flags

The launcher checks the output folder and writes the vocab (`prepare.start`); the pipeline
reads each group of input files (`prepare.plan_groups`) into shards of documents, makes
each shard's records on any worker (`prepare.ShardMaker`) and writes meta.json once every
shard is written (`prepare.finish`). The output is the local prepare's, file for file.
Flags other than prepare's (`--runner`, ...) go to Beam's PipelineOptions.
"""

from __future__ import annotations

import sys

from flax_bert.data import config as data_config, folder as folder_lib, prepare as prepare_lib
from flax_bert.data import shards as shards_lib
from flax_bert.data import storage
from flax_bert.data.config import DataOptions
from flax_bert.errors import UserError

ERRORS = "beam-errors.txt"  # the first UserError of a failed run (read and removed by run)


def run(opts: DataOptions, output_dir: str, beam_args: list[str], *,
        force: bool = False) -> dict:
    """Prepare `opts` into output_dir with Beam; returns meta (cached like `prepare`).

    A UserError in a worker (an unreadable input, too few documents) travels as data (its
    message, a str among the tasks and stats) to the last step, which writes it to ERRORS
    in the folder instead of meta.json; the launcher raises it here as the same one-line
    UserError (runners wrap a worker's exception in their own, with its traceback)."""
    import apache_beam as beam  # the optional extra: pip install -e ".[beam]"
    from apache_beam.options.pipeline_options import PipelineOptions

    plan = prepare_lib.start(opts, output_dir, force=force)
    if plan.meta is not None:
        return plan.meta
    errors = storage.path(output_dir) / ERRORS
    errors.unlink(missing_ok=True)

    def shards(group: tuple[int, list[str]]):
        g, paths = group
        try:
            for part, docs in enumerate(shards_lib.group_shards(paths, opts)):
                yield g, part, docs
        except UserError as e:
            yield str(e)

    def make(task):
        return task if isinstance(task, str) else _caught(plan.maker, task)

    def write_meta(results: list) -> None:
        failed = [r for r in results if isinstance(r, str)]
        if not failed:
            outcome = _caught(prepare_lib.finish, plan, results)
            failed = [outcome] if isinstance(outcome, str) else []
        if failed:
            errors.write_text(min(failed))  # the same message whatever the order

    with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
        _ = (
            pipeline
            | "Groups" >> beam.Create(list(enumerate(plan.groups)))
            | "ReadShards" >> beam.FlatMap(shards)
            | "Spread" >> beam.Reshuffle()
            | "MakeShards" >> beam.Map(make)
            | "Collect" >> beam.combiners.ToList()
            | "WriteMeta" >> beam.Map(write_meta)
        )
    if errors.exists():
        message = errors.read_text()
        errors.unlink()
        raise UserError(message)
    return folder_lib.load_meta(output_dir)


def _caught(fn, *args):
    """fn(*args), or its UserError's message."""
    try:
        return fn(*args)
    except UserError as e:
        return str(e)


def main(argv: list[str] | None = None) -> int:
    parser = prepare_lib.parser("python -m flax_bert.data.beam_prepare", __doc__.splitlines()[0])
    args, beam_args = parser.parse_known_args(argv)
    try:
        meta = run(data_config.from_flags(args), args.output, beam_args, force=args.force)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(prepare_lib.summary(args.output, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
