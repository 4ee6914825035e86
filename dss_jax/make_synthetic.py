r"""Writes the built-in synthetic dataset's teacher caches and reports on them.

    python -m dss_jax.make_synthetic --cache_dir=/tmp/dss --max_operations=2 --train_size=500

prints the files (train, validation, test, and unlabeled with --unlabeled_size, under
<cache_dir>/synthetic/seed<seed>-<hash>/),
per split the teacher report (`teacher_accuracy=` ..., as dss_jax.data.report computes it
for any cache), and the accuracies of trivial baselines that a student must beat. Every
setting of `SyntheticConfig` is a flag; files that exist for the same settings are kept
(they would be byte-identical) unless --force. The directory is checked before anything
is generated (dss_jax/output_paths.py): it may not lie in a run or a checkpoint, and must
be writable.
"""

import dataclasses

from absl import app, flags

from dss_jax import cli, output_paths
from dss_jax.data import synthetic

FLAGS = flags.FLAGS
flags.DEFINE_string("cache_dir", None, "where to write (default: $DSS_CACHE_DIR or ~/.cache/dss_jax)")
flags.DEFINE_bool("force", False, "regenerate even when the files exist")

_HELP = {
    "seed": "the seed everything is drawn from",
    "min_operations": "fewest operations per problem (1..3)",
    "max_operations": "most operations per problem (1..3): the difficulty",
    "min_number": "smallest number in a story",
    "max_number": "largest number drawn for a story (products and sums grow beyond)",
    "distractor_rate": "fraction of problems with a sentence whose number must be ignored",
    "teacher_error_rate": "fraction of teacher completions with a wrong label",
    "teacher_slip_rate": "fraction with an arithmetic slip in the rationale but a right label",
    "unparsable_rate": "fraction without an answer phrase (the parser finds no label)",
    "continuation_rate": "fraction of parsable completions that ramble on into an invented question",
    "samples_per_record": "teacher samples per problem",
    "unlabeled_size": "problems without label or teacher sample (split unlabeled), for self-training",
}
for _field in dataclasses.fields(synthetic.SyntheticConfig):
    _define = flags.DEFINE_integer if _field.type in (int, "int") else flags.DEFINE_float
    _define(_field.name, _field.default, _HELP.get(_field.name, _field.name.replace("_", " ")))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = synthetic.SyntheticConfig(
            **{f.name: FLAGS[f.name].value for f in dataclasses.fields(synthetic.SyntheticConfig)}
        )
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    cache_dir = synthetic.synthetic_cache_dir(FLAGS.cache_dir)
    output_paths.check_outputs(
        [output_paths.Output("--cache_dir", synthetic.dataset_dir(config, cache_dir), directory=True)],
        overwrite=FLAGS.force,
        overwrite_setting="--force",
    )
    paths = synthetic.write_dataset(config, cache_dir) if FLAGS.force else synthetic.ensure_dataset(config, cache_dir)
    for line in synthetic.describe(paths):
        print(line)


if __name__ == "__main__":
    cli.run(main, "make_synthetic")
