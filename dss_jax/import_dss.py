r"""Convert the paper's released files into a teacher cache and report on them.

    python -m dss_jax.import_dss --dss_dir ../shared/data/dss_palm --dataset svamp \
        --split train --output svamp_train.jsonl

prints the number of records, how many completions did not parse, and last
`teacher_accuracy=<fraction>`: the teacher's labels judged against the ground truth
as the reference scores them (equation value for svamp, exact text otherwise).

--output is checked before any file is read (dss_jax/output_paths.py): an existing
non-empty one is replaced only with --overwrite; one of the files it reads, or a file of
a run or a checkpoint, never.
"""

from absl import app, flags

from dss_jax import cli, output_paths
from dss_jax.data import dss_paper, sources

_DSS_DIR = flags.DEFINE_string("dss_dir", None, "The paper's datasets folder (holds svamp/, cqa/, ...).")
_DATASET = flags.DEFINE_enum("dataset", None, list(sources.DATASETS), "Which dataset to import.")
_SPLIT = flags.DEFINE_string("split", None, "Split of the released files: train, test, valid or sample.")
_OUTPUT = flags.DEFINE_string("output", None, "The cache file (JSONL) to write.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --output when it exists.")
flags.mark_flags_as_required(["dss_dir", "dataset", "split", "output"])


def _inputs() -> dict[str, str]:
    """The released files of the split that exist: what --output must not replace."""
    found = {"--dss_dir": dss_paper.split_path(_DSS_DIR.value, _DATASET.value, _SPLIT.value)}
    llm = dss_paper.completions_path(_DSS_DIR.value, _DATASET.value, _SPLIT.value, 0).parent
    if llm.is_dir():
        found.update((f"--dss_dir ({p.name})", p) for p in sorted(llm.glob(f"{_SPLIT.value}_CoT_*.json")))
    return found


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    output_paths.check_outputs(
        [output_paths.Output("--output", _OUTPUT.value)],
        inputs=_inputs(),
        overwrite=_OVERWRITE.value,
        overwrite_setting="--overwrite",
    )
    try:
        summary = dss_paper.import_to_cache(
            _DSS_DIR.value, _DATASET.value, _SPLIT.value, _OUTPUT.value, overwrite=_OVERWRITE.value
        )
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as e:
        raise app.UsageError(str(e)) from None
    print(f"dataset={_DATASET.value} split={_SPLIT.value} output={_OUTPUT.value}")
    for line in summary.lines():
        print(line)


if __name__ == "__main__":
    cli.run(main, "import_dss")
