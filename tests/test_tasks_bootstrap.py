"""Tasks for self-training: several train caches, label_source 'gt_else_teacher', and the
synthetic round-2 task `dss_synthetic_bootstrap`."""

import pytest
import seqio

import gin
import tasks.bootstrap  # registers dss_synthetic_bootstrap
from dss_jax.data import options as dss_options
from dss_jax.data import paired as dss_paired
from dss_jax.data import synthetic
from dss_jax.data import tasks as dss_tasks
from dss_jax.data.cache import CacheRecord, CacheWriter, TeacherSample, read_cache


def write(path, records):
    with CacheWriter(path, fsync=False) as w:
        w.write_all(records)
    return path


GOLD_PARSED = CacheRecord(id="a", input="x1", label="L1", samples=(TeacherSample("r1", "T1"),))
GOLD_UNPARSED = CacheRecord(id="b", input="x2", label="L2", samples=(TeacherSample(None, None, "junk"),))
STUDENT = CacheRecord(id="c", input="x3", label=None, samples=(TeacherSample("r3", "S3"),))
NOTHING = CacheRecord(id="d", input="x4", label=None, samples=(TeacherSample("r4", None),))


def pairs(examples):
    return [(e["id"], e["label_targets"], e["rationale_targets"], e["teacher_label"]) for e in examples]


def test_gt_else_teacher_takes_the_gold_label_when_there_is_one():
    records = [GOLD_PARSED, GOLD_UNPARSED, STUDENT, NOTHING]
    examples, dropped = dss_paired.training_examples(records, dss_options.TaskOptions(label_source="gt_else_teacher"))
    assert pairs(examples) == [("a", "L1", "r1", "T1"), ("b", "L2", "", ""), ("c", "S3", "r3", "S3")]
    assert dropped == 1
    # The other sources, for contrast: gold drops the unlabeled, teacher the unparsed.
    gt, _ = dss_paired.training_examples(records, dss_options.TaskOptions(label_source="gt"))
    teacher, _ = dss_paired.training_examples(records, dss_options.TaskOptions(label_source="teacher"))
    assert [e["id"] for e in gt] == ["a", "b"] and [e["id"] for e in teacher] == ["a", "c"]
    with pytest.raises(ValueError, match=r"label_source must be one of \('gt', 'teacher', 'gt_else_teacher'\)"):
        dss_options.TaskOptions(label_source="student")


def test_several_train_caches_are_concatenated_and_ids_must_differ(tmp_path):
    labeled = write(tmp_path / "labeled.jsonl", [GOLD_PARSED, GOLD_UNPARSED])
    student = write(tmp_path / "student.jsonl", [STUDENT, NOTHING])
    valid = write(tmp_path / "valid.jsonl", [CacheRecord(id="v", input="x5", label="L5")])
    options = dss_options.TaskOptions(label_source="gt_else_teacher")
    task = dss_tasks.register_cache_task(
        "toy_union", train_cache=[labeled, student], validation_cache=valid, family="cqa", options=options
    )
    try:
        assert [r.id for r in dss_tasks.split_records("toy_union", "train")] == ["a", "b", "c", "d"]
        raw = [{k: v.decode() for k, v in ex.items()} for ex in task.source.get_dataset("train").as_numpy_iterator()]
        assert pairs(raw) == [("a", "L1", "r1", "T1"), ("b", "L2", "", ""), ("c", "S3", "r3", "S3")]
        assert raw[2]["label_inputs"] == "predict: x3" and raw[2]["rationale_inputs"] == "explain: x3"

        clash = write(tmp_path / "clash.jsonl", [CacheRecord(id="b", input="x9", label=None)])
        dss_tasks.register_cache_task(
            "toy_union", train_cache=[labeled, student, clash], validation_cache=valid, family="cqa", options=options
        )
        with pytest.raises(ValueError, match=rf"toy_union train caches: id 'b' is in both {labeled} and {clash}"):
            dss_tasks.split_records("toy_union", "train")
    finally:
        seqio.TaskRegistry.remove("toy_union")
        dss_tasks.REGISTERED.discard("toy_union")


def test_synthetic_bootstrap_task_is_the_labeled_train_plus_the_student_cache(tmp_path):
    sizes = [
        "synthetic_config.train_size = 20",
        "synthetic_config.validation_size = 4",
        "synthetic_config.test_size = 5",
        "synthetic_config.unlabeled_size = 6",
    ]
    gin.clear_config()
    try:
        gin.parse_config([f"synthetic_cache_dir.directory = '{tmp_path}'", *sizes])
        with pytest.raises(ValueError, match="bind bootstrap_student_cache.path"):
            dss_tasks.split_records(tasks.bootstrap.TASK_NAME, "train")
        config = synthetic.SyntheticConfig(train_size=20, validation_size=4, test_size=5, unlabeled_size=6)
        paths = synthetic.ensure_dataset(config, tmp_path)
        annotated = [
            CacheRecord(id=r.id, input=r.input, label=None, samples=(TeacherSample("so", "( 1 + 2 )"),))
            for r in read_cache(paths["unlabeled"])
        ]
        student = write(tmp_path / "student.jsonl", annotated)
        gin.parse_config(
            [f"bootstrap_student_cache.path = '{student}'", "task_options.label_source = 'gt_else_teacher'"]
        )
        train = dss_tasks.split_records(tasks.bootstrap.TASK_NAME, "train")
        assert [r.id for r in train] == [r.id for r in read_cache(paths["train"])] + [r.id for r in annotated]
        for split in ("validation", "test"):
            assert dss_tasks.split_records(tasks.bootstrap.TASK_NAME, split) == read_cache(paths[split])
        assert dss_tasks.task_family(tasks.bootstrap.TASK_NAME) == "svamp"
    finally:
        gin.clear_config()
